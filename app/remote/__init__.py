"""The remote engine (issue 12, first part): what a client may send a server and how a server is kept safe.

``protocol.py`` validates the live-setting messages a client sends over the WebRTC data channel and applies
them to an engine between frames; ``security.py`` holds the server's token and its refusal to listen on a
public address without TLS. The server (aiohttp WHIP signaling, aiortc media) and the client build on them.
"""
