"""ModelMarket: the domain (chain, ledger, indexer, auth) and its web faces."""
