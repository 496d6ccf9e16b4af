"""The gateway: HTTP intake and the WebSocket endpoint, the only package that uses Starlette."""
