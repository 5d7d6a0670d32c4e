"""Content addressing and stores: Kubo-identical CIDs, the embedded store, IPFS, the
verified model cache. Knows nothing of payments."""
