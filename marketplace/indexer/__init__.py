"""The chain into the database: events applied after N confirmations, reorgs undone, and
the content behind each listing (card and model) fetched and checked."""
