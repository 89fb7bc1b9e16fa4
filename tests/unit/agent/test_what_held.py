"""Defences the adversarial run found holding, kept as regressions: no shell anywhere, 413
on oversized bodies, lxml escaping of every text that reaches the domain XML."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from lxml import etree

from stratus_agent import base
from stratus_agent.domain import builder as domain_builder
from stratus_agent.domain import xml as domain_xml
from stratus_api.guest import GuestSpec
from testsupport import AGENT_AUTH, REPO_ROOT, guest_spec

SHELL_CALLS = {
    ("os", "system"), ("os", "popen"), ("subprocess", "getoutput"),
    ("subprocess", "getstatusoutput"), ("asyncio", "create_subprocess_shell"),
}  # fmt: skip


def _shell_uses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.Call):
            continue
        for keyword in node.keywords:
            if keyword.arg == "shell" and not (
                isinstance(keyword.value, ast.Constant) and keyword.value.value is False
            ):
                found.append(f"{path}:{node.lineno}: shell=")
        func = node.func
        named = isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
        if named and (func.value.id, func.attr) in SHELL_CALLS:  # type: ignore[union-attr]
            found.append(f"{path}:{node.lineno}: {func.value.id}.{func.attr}")
    return found


def test_no_shell_anywhere() -> None:
    sources = [p for d in ("operator", "agents", "bench") for p in (REPO_ROOT / d).rglob("*.py")]
    assert len(sources) > 50
    assert [use for path in sources for use in _shell_uses(path)] == []


async def test_an_oversized_body_is_refused_with_413(
    agent: tuple[TestClient[Any, Any], Any],
) -> None:
    client, _ = agent
    spec = guest_spec()
    spec["name"] = "x" * (3 * 2**20)  # larger than the agent takes in one request
    response = await client.put(f"/v1/guests/{spec['uid']}", json=spec, headers=AGENT_AUTH)
    assert response.status == 413
    inventory = await (await client.get("/v1/guests", headers=AGENT_AUTH)).json()
    assert inventory["guests"] == []


def test_text_reaching_the_domain_xml_is_escaped() -> None:
    hostile = 'evil</title><devices><disk type="file"><source file="/etc/shadow"/></disk>&x;'
    spec = GuestSpec.model_validate({**guest_spec(), "name": hostile, "namespace": "ns&<>"})
    facts = base.NodeFacts(
        root_disk=base.DiskSource(path="/r.qcow2"), seed_iso_path="/s.iso",
        nics=tuple(base.NicBinding(bridge="br0") for _ in spec.nics),
    )  # fmt: skip
    xml = domain_builder.build_domain(spec, facts, virt_type="qemu", console_log="/c.log").to_xml()
    tree = etree.fromstring(xml.encode())
    assert tree.findtext("title") == f"ns&<>/{hostile}"
    assert [s.get("file") for s in tree.iter("source") if s.get("file")] == [
        "/r.qcow2", "/s.iso",
    ]  # fmt: skip
    assert domain_xml.Domain.from_xml(xml).title == f"ns&<>/{hostile}"
