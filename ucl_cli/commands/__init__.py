"""One module per command group; each exposes `register(app)` and holds no logic of its own."""
