"""Fix-it sentences: what the operator must do when the gateway refuses to go on.

Each :class:`~engine.errors.FatalGatewayError` the client raises carries one of these as its
``fix``. They name the setting or console page to change, never a secret.
"""

from __future__ import annotations

TOKEN_FIX = (
    "the access token expired and could not be refreshed: set IMG1688_ACCESS_TOKEN / "
    "IMG1688_REFRESH_TOKEN to tokens from a fresh authorisation of the app in the 1688 console"
)
SIGNATURE_FIX = "check IMG1688_APP_SECRET matches the app key; `img1688 sign` shows what we sign"
APP_KEY_FIX = "check IMG1688_APP_KEY: the gateway does not know this app key"
IP_FIX = "add this machine's public IP to the app's IP whitelist in the 1688 console"
USAGE_FIX = "the app's API quota is used up; wait for it to reset or buy more"
CLOCK_FIX = "sync this machine's clock (NTP): the gateway allows only a few minutes of skew"
PARAM_FIX = "the request was malformed: check page_size (1..50) and the filters, else report a bug"
UNREACHABLE_FIX = (
    "check gateway.endpoint (the URL), that this machine resolves its host name (DNS), and the "
    "route or proxy from this machine to it"
)


def acl_fix(api: str) -> str:
    return f"apply for permission to {api} in the 1688 console"


def unsupported_fix(api: str) -> str:
    return f"the gateway does not offer {api}: check the protocol and the base URL"


def unknown_fix(status: int) -> str:
    return (
        f"the gateway answered HTTP {status} with an error this client does not know: "
        "check the base URL, and quote the request_id to 1688 support"
    )
