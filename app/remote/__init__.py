"""The engine on another machine (issue 12): ``server.py`` runs engines behind WHIP-style signaling (aiohttp) and
WebRTC media (aiortc); ``client.py`` is the engine a local app uses in their place; ``protocol.py`` checks the
live-setting messages between them; ``security.py`` holds the server's token and TLS rules."""
