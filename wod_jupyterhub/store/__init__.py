"""The database the hub parts and the service share: its tables and their migrations."""
