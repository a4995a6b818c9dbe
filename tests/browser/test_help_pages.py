"""Every node's help page as the frontend shows it: the node selected, the right side panel's Info
tab renders the pack's page (`web/docs/<NodeId>/en.md`) and the browser console shows no 404 (the
frontend's first lookup, `/extensions/<pack>/docs/<NodeId>/en.md`, must answer)."""

from devtools.paths import REPO_ROOT, pack_module_name
from tests.browser.test_templates import severe

PAGES = sorted(p.parent.name for p in (REPO_ROOT / "web" / "docs").glob("*/en.md"))


def test_every_pack_node_has_a_page(server):
    nodes = {k for k, v in server.get_json("/object_info").items() if v["python_module"].startswith("custom_nodes.")}
    assert sorted(nodes) == PAGES


def test_each_help_page_renders_without_a_404(frontend):
    frontend.read_console()
    for node_id in PAGES:
        shown = frontend.node_help(node_id)
        title = (REPO_ROOT / "web" / "docs" / node_id / "en.md").read_text().splitlines()[0].removeprefix("# ")
        assert shown is not None and shown.startswith(title), (node_id, shown)
        assert severe(frontend.read_console()) == [], node_id


def test_a_404_shows_in_the_console_the_check_reads(frontend):
    """The check above must be able to fail: a help request that misses is a SEVERE console entry."""
    frontend.read_console()
    frontend._async("await fetch(args[0]);", f"/extensions/{pack_module_name()}/docs/NoSuchNode/en.md")
    entries = severe(frontend.read_console())
    assert any("404" in e["message"] for e in entries), entries
