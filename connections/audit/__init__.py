"""The audit log: events one by one, many with one statement, failed authentications counted."""
