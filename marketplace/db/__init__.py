"""The database: engines and sessions, the typed tables, migrations."""
