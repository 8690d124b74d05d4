"""REST client for the Kernel Gateway's kernel API (``/api/kernelspecs``, ``/api/kernels``).

Every request carries ``Authorization: token …`` (never ``?token=``, which the gateway would
write to its log). httpx errors are translated into :mod:`jlabgw.errors` here.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from jlabgw.errors import (
    ConnectionLostError,
    GatewayAuthError,
    GatewayError,
    GatewayImpostorError,
    GatewayServerError,
    KernelNotFoundError,
)
from jlabgw.jupyter.endpoint import GatewayEndpoint, impostor_message, is_impostor

__all__ = ["GatewayClient"]

_SETTLE_ATTEMPTS = 25  # x 0.2 s: a restart under load can take a few seconds
_SETTLE_RETRY_DELAY = 0.2


class GatewayClient:
    """Thin async wrapper over the gateway's REST API."""

    def __init__(self, endpoint: GatewayEndpoint, timeout: float = 60.0) -> None:
        self.endpoint = endpoint
        self._http = httpx.AsyncClient(
            base_url=endpoint.url,
            headers=endpoint.headers,
            timeout=timeout,
            verify=endpoint.ssl_context or True,  # the pinned certificate only (https)
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(
        self, method: str, path: str, *, json: Any = None, kernel_id: str | None = None
    ) -> Any:
        try:
            resp = await self._http.request(method, path, json=json)
        except httpx.TimeoutException as exc:
            raise ConnectionLostError(
                f"the gateway at {self.endpoint.url} did not answer {method} {path} in time"
            ) from exc
        except httpx.ConnectError as exc:
            if is_impostor(exc):
                raise GatewayImpostorError(
                    impostor_message(self.endpoint, f"{method} {path} refused")
                ) from exc
            raise ConnectionLostError(
                f"cannot reach the gateway at {self.endpoint.url} ({type(exc).__name__}); "
                "it may have stopped — `jlabgw status` shows its state"
            ) from exc
        except httpx.TransportError as exc:
            raise ConnectionLostError(
                f"cannot reach the gateway at {self.endpoint.url} ({type(exc).__name__}); "
                "it may have stopped — `jlabgw status` shows its state"
            ) from exc
        if resp.status_code in (401, 403):
            raise GatewayAuthError(
                f"the gateway refused our token for {method} {path} (HTTP {resp.status_code})"
            )
        if resp.status_code == 404 and kernel_id is not None:
            raise KernelNotFoundError(
                f"kernel {kernel_id} no longer exists on the gateway (it was shut down or "
                "the gateway restarted); its state is gone — start a new session, or "
                "start_session_resume_notebook to re-run the notebook"
            )
        if resp.status_code >= 400:
            reason = _error_reason(resp)
            error = GatewayServerError if resp.status_code >= 500 else GatewayError
            raise error(f"{method} {path} failed: HTTP {resp.status_code} {reason}")
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    async def kernelspecs(self) -> dict[str, Any]:
        data: dict[str, Any] = await self._request("GET", "/api/kernelspecs")
        return data

    async def list_kernels(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = await self._request("GET", "/api/kernels")
        return data

    async def start_kernel(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = await self._request("POST", "/api/kernels", json={"name": name})
        return data

    async def get_kernel(self, kernel_id: str) -> dict[str, Any]:
        data: dict[str, Any] = await self._request(
            "GET", f"/api/kernels/{kernel_id}", kernel_id=kernel_id
        )
        return data

    async def interrupt_kernel(self, kernel_id: str) -> None:
        await self._request("POST", f"/api/kernels/{kernel_id}/interrupt", kernel_id=kernel_id)

    async def restart_kernel(self, kernel_id: str) -> dict[str, Any]:
        data: dict[str, Any] = await self._settled(
            "POST", f"/api/kernels/{kernel_id}/restart", kernel_id
        )
        return data

    async def delete_kernel(self, kernel_id: str) -> None:
        await self._settled("DELETE", f"/api/kernels/{kernel_id}", kernel_id)

    async def _settled(self, method: str, path: str, kernel_id: str) -> Any:
        """``method path``, retried while the kernel is being auto-restarted.

        A kernel that just died is restarted by the gateway on its own; until that settles
        (well within a second, a few under load) a restart or delete answers 500
        (InvalidStateError / "Exception restarting kernel" in jupyter_client). Neither request
        runs code, so repeating one is safe. Bounded."""
        for attempt in range(_SETTLE_ATTEMPTS):
            try:
                return await self._request(method, path, kernel_id=kernel_id)
            except GatewayServerError:
                if attempt == _SETTLE_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(_SETTLE_RETRY_DELAY)
        raise AssertionError("unreachable")


def _error_reason(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.reason_phrase
    if isinstance(body, dict):
        return str(body.get("message") or body.get("reason") or resp.reason_phrase)
    return resp.reason_phrase
