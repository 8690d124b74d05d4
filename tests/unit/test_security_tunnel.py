"""``jlabgw tunnel``'s curl lines keep the token out of every argv (``ps``) in all three cases:
a local gateway's config file, a batch job's connection file, a port forwarded by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from jlabgw.cli.tunnel import _print_access
from jlabgw.cluster.backends.status import GatewayStatus


@pytest.mark.parametrize("where", ["local", "job", "forward"])
def test_curl_reads_the_header_from_stdin(
    where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = {
        "local": GatewayStatus(state="running", token_file=str(tmp_path / "gw config.json")),
        "job": GatewayStatus(state="running", token_file="/h/c.json", token_host="login"),
        "forward": None,
    }[where]
    _print_access("http://127.0.0.1:9", gateway)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("try:"))
    assert "| curl -sS -H @- http://127.0.0.1:9/api/kernelspecs" in line
    assert "-H 'Authorization" not in line
    assert '-H "Authorization' not in line
    if where == "local":
        assert "'" + str(tmp_path / "gw config.json") + "'" in line  # quoted for the shell
