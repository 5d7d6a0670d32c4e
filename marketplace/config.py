"""The one Settings object: environment variables `MODELMARKET_*` and a `.env` file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from marketplace.errors import ConfigurationError

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    """Everything configurable, read once and passed down; no other module reads the env."""

    model_config = SettingsConfigDict(
        env_prefix="MODELMARKET_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    data_dir: Path = Field(
        default=PROJECT_ROOT / ".modelmarket",
        description="Where the embedded default keeps its state (chain, deployment, database).",
    )
    rpc_url: str | None = Field(
        default=None,
        description="JSON-RPC URL of an EVM chain. Unset: the embedded default starts anvil.",
    )
    deployment_file: Path | None = Field(
        default=None,
        description="Chain id and contract addresses (JSON). Default: <data_dir>/deployment.json.",
    )
    private_key: SecretStr | None = Field(
        default=None,
        description="Hex key that signs transactions sent from this process. Never logged.",
    )
    keystore: Path | None = Field(
        default=None,
        description="An encrypted Ethereum keystore file (JSON, eth-account) that signs the"
        " CLI's transactions and sign-ins; used when MODELMARKET_PRIVATE_KEY is unset.",
    )
    keystore_password: SecretStr | None = Field(
        default=None,
        description="The keystore's password. Unset: the CLI asks for it. Never logged.",
    )
    config_dir: Path = Field(
        default_factory=lambda: Path.home() / ".config" / "modelmarket",
        description="Where the CLI keeps the API keys it signed in for (mode 600).",
    )
    redeem_wait: float = Field(
        default=30.0,
        gt=0,
        description="Seconds `modelmarket buy` waits for its purchase's confirmations before"
        " it leaves the credit to the indexer.",
    )
    confirmations: int = Field(
        default=2, ge=0, description="Blocks on top of a transaction before it counts."
    )
    tx_timeout: float = Field(
        default=120.0, gt=0, description="Seconds to wait for a transaction receipt."
    )
    rpc_timeout: float = Field(default=10.0, gt=0, description="Seconds per JSON-RPC request.")
    rpc_retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Retries of a JSON-RPC request that met a connection error or a timeout"
        " (reads, and resending the same signed transaction), 0.1 s apart and doubling.",
    )
    fee_bps: int = Field(
        default=250, ge=0, le=1000, description="Protocol fee set at deployment (basis points)."
    )
    anvil_bin: Path = Field(
        default=PROJECT_ROOT / "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil",
        description="The anvil binary the embedded default starts.",
    )
    anvil_port: int = Field(
        default=0, ge=0, le=65535, description="Port for the embedded anvil; 0 picks a free one."
    )
    http_host: str = Field(
        default="127.0.0.1", description="Address `modelmarket run` serves the gateway on."
    )
    http_port: int = Field(
        default=8000, ge=0, le=65535, description="Port `modelmarket run` serves the gateway on."
    )
    public_url: str | None = Field(
        default=None,
        description="The URL people reach the gateway at (scheme://host[:port]); Sign-In"
        " with Ethereum messages must name its host and origin. Default:"
        " http://<http_host>:<http_port>, what `modelmarket run` serves.",
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="Secret that signs sign-in nonces. Unset: a random one kept in"
        " <data_dir>/secret_key (mode 600). Set the same one on every replica.",
    )
    max_api_body_bytes: int = Field(
        default=64 * 1024, gt=0, description="Largest request body on /api/v1 (413 above)."
    )
    max_infer_body_bytes: int = Field(
        default=256 << 20,
        gt=0,
        description="Largest request body on /v2 (an inference's tensors; 413 above).",
    )
    max_infer_json_bytes: int = Field(
        default=32 << 20,
        gt=0,
        description="Largest JSON part of a /v2 inference request (413 above; large tensors"
        " go in the binary extension).",
    )
    http_workers: int = Field(
        default=2, ge=1, description="Worker processes the gateway is served with (8 threads each)."
    )
    http_server: Literal["granian", "gunicorn"] = Field(
        default="granian",
        description="The HTTP server `modelmarket serve` runs: granian (Rust, WSGI; 1.4-2.6x"
        " gunicorn's requests/s here) or gunicorn (gthread, gunicorn.conf.py).",
    )
    worker_timeout: float | None = Field(
        default=None,
        gt=0,
        description="Seconds a server worker may stay silent (its interpreter stuck, or"
        " still building the app) before it is killed and replaced. Default: the inference"
        " time limit + the x402 settle timeout + 30.",
    )
    artifacts_dir: Path = Field(
        default=PROJECT_ROOT / "contracts/artifacts",
        description="Compiled contract artifacts (ABI, bytecode).",
    )

    ipfs_api: str | None = Field(
        default=None,
        description="Kubo RPC API multiaddr (/ip4/H/tcp/P/http). Unset: the embedded store.",
    )
    storage_timeout: float = Field(
        default=30.0, gt=0, description="Seconds an IPFS request may take (add, cat, pin)."
    )
    cache_max_bytes: int = Field(
        default=2 << 30, gt=0, description="Byte bound of the gateway's verified model cache."
    )

    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL (postgresql+psycopg://... or sqlite:///...)."
        " Default: SQLite in <data_dir>/modelmarket.db.",
    )
    db_timeout: float = Field(
        default=5.0,
        gt=0,
        description="Seconds to open a PostgreSQL connection or wait for a pooled one; past"
        " it a paid call answers 503 database_unavailable (nothing charged).",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="`json`: one JSON object per log line (for a log collector). No line"
        " carries a key, an API key or a signature either way.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="The least severe log level written."
    )
    metrics_dir: Path | None = Field(
        default=None,
        description="Where a server's workers share their Prometheus counters: a folder per"
        " server is made under it (default: <tmp>/modelmarket-metrics) and handed to its"
        " workers in this variable. Unset in a process outside a server: /metrics shows"
        " its own.",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="If set, GET /metrics wants `Authorization: Bearer <token>` (403"
        " otherwise). Never logged.",
    )
    indexer_batch_blocks: int = Field(
        default=2000, gt=0, description="Blocks per eth_getLogs request while indexing."
    )
    reorg_depth: int = Field(
        default=64, gt=0, description="How many recent block hashes the indexer keeps."
    )
    max_card_bytes: int = Field(
        default=64 * 1024, gt=0, description="Largest model card (JSON) the indexer reads."
    )
    max_model_bytes: int = Field(
        default=1 << 30, gt=0, description="Largest model file the indexer fetches and lists."
    )
    model_load_memory_bytes: int = Field(
        default=2 << 30,
        gt=0,
        description="Memory a model may take to load (checked once per listing, in a child"
        " process, before it is offered); above it the listing is refused.",
    )
    model_load_timeout: float = Field(
        default=30.0, gt=0, description="Seconds a model may take to load (same check)."
    )
    inference_threads: int = Field(
        default=1, ge=1, description="onnxruntime intra-op threads per session."
    )
    inference_time_limit: float = Field(
        default=10.0, gt=0, description="Seconds one inference call may run before it is stopped."
    )
    max_input_elements: int = Field(
        default=1 << 24, gt=0, description="Most tensor elements one call may send."
    )
    session_cache_bytes: int = Field(
        default=1 << 30, gt=0, description="Byte bound of model files held as live sessions."
    )
    inference_memory_bytes: int = Field(
        default=4 << 30, gt=0, description="Process-wide cap on onnxruntime's CPU arena."
    )
    key_cache_ttl: float = Field(
        default=2.0,
        ge=0,
        description="Seconds a gateway worker trusts an API key it read (revocation "
        "through another worker takes this long to reach it).",
    )
    credit_lease_size: int = Field(
        default=4096,
        gt=0,
        description="Most calls a gateway worker takes from a credit in one statement "
        "(leases start at 16 and double while a buyer spends one within a second; "
        "1 = one database write per paid call).",
    )
    credit_lease_ttl: float = Field(
        default=30.0,
        gt=0,
        description="Seconds after which a silent worker's leased calls go back to the "
        "buyer (a crashed worker's unspent calls return after this).",
    )
    settler_key: SecretStr | None = Field(
        default=None,
        description="Hex key of the gateway's on-chain identity: it settles x402 payments"
        " (the marketplace owner allows it with setSettler) and anchors the roots of usage"
        " receipts; it pays their gas. Unset: no x402 offers, no receipts. Never logged.",
    )
    receipts: bool = Field(
        default=True,
        description="Issue a usage receipt for every served paid call (X-Usage-Receipt)"
        " and anchor their Merkle roots on-chain (needs MODELMARKET_SETTLER_KEY).",
    )
    anchor_period: float = Field(
        default=60.0,
        gt=0,
        description="Seconds a receipt waits before its batch is closed (by the"
        " leading indexer; by a gateway worker when no indexer runs) and its root anchored"
        " (one transaction per batch). Give indexers and gateways the same.",
    )
    anchor_max_calls: int = Field(
        default=10_000,
        ge=1,
        description="Receipts per batch at most: a batch this full is anchored at once.",
    )
    x402_settle_timeout: float = Field(
        default=20.0,
        gt=0,
        description="Seconds a paid x402 call waits for its settlement to be mined before"
        " answering 504 settlement_pending (the payment settles later, once; the same"
        " request sent again then gets its answer).",
    )
    x402_reservation_ttl: float = Field(
        default=120.0,
        gt=0,
        description="Seconds after which an x402 authorization reserved by a worker that"
        " died before settling is released (nothing was sent: it can be used again).",
    )
    x402_max_timeout_seconds: int = Field(
        default=300,
        gt=10,
        description="maxTimeoutSeconds in x402 offers: how long a signed authorization"
        " may stay valid.",
    )

    @property
    def db_url(self) -> str:
        """The database URL in use."""
        return self.database_url or f"sqlite:///{self.data_dir / 'modelmarket.db'}"

    @property
    def public(self) -> str:
        """The public URL in use, without a trailing slash."""
        return (self.public_url or f"http://{self.http_host}:{self.http_port}").rstrip("/")

    @property
    def silent_worker_timeout(self) -> float:
        """Seconds a silent server worker lives: well above the longest inference plus an
        x402 settlement's wait, unless set."""
        return self.worker_timeout or self.inference_time_limit + self.x402_settle_timeout + 30

    @property
    def secret_path(self) -> Path:
        """Where a generated secret key is kept."""
        return self.data_dir / "secret_key"

    @property
    def store_dir(self) -> Path:
        """The embedded content store's folder."""
        return self.data_dir / "store"

    @property
    def cache_dir(self) -> Path:
        """The model cache's folder."""
        return self.data_dir / "cache"

    @property
    def deployment_path(self) -> Path:
        """Where the deployment record lives."""
        return self.deployment_file or self.data_dir / "deployment.json"


def load_settings() -> Settings:
    """Settings from the environment and .env; ConfigurationError naming each bad
    variable (never its value: it may be a key)."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"MODELMARKET_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors()
        )
        raise ConfigurationError(f"invalid settings: {problems}") from None
