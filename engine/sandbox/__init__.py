"""A credential-free stand-in for the 1688 gateway, speaking both protocols (``ocean``, ``seed``).

``async with Sandbox(SandboxConfig(...)) as sandbox`` serves the gateway at ``sandbox.url`` with
its own app (key, secret, tokens; more with ``extra_apps``), a strict rate window per app, token
expiry, IP allowlist, ACL and usage limits, and seeded fault injection; it serves the offers'
photos at the image URLs its answers give, as a CDN, and reloads its catalogue when the
catalogue's ``catalogue.json`` changes; ``sandbox.stats()`` says what it saw. The tests and
benchmarks run against it, and ``img1688 sandbox`` serves it from the command line.
"""

from engine.sandbox.faults import Faults
from engine.sandbox.server import Sandbox, SandboxApp, SandboxConfig

__all__ = ["Faults", "Sandbox", "SandboxApp", "SandboxConfig"]
