"""Pages for people: their views, the connection form, the dashboard."""
