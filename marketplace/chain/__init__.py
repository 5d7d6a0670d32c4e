"""The chain: contract artifacts, signed transactions, reverts as domain errors, the typed
marketplace binding and the one event decoder."""
