"""The Jupyter protocol: where a gateway is (endpoint), its REST API (rest), and the
kernel WebSocket (channels)."""
