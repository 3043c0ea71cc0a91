"""
Tests that the repository's documents match the code: the README's list of
reply prefixes, its links, and the license files setup.cfg names.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).parent.parent


class DocumentsTests(SynchronousTestCase):
    """
    The README and the packaging metadata describe the repository as it is.
    """

    def test_everyGatewayPrefixListed(self) -> None:
        """
        Every machine-readable prefix the gateway starts an C{OK}, C{CLOSED}
        or C{NOTICE} message with is listed in the README.
        """
        gateway = ROOT / "relaypool" / "gateway"
        modules = ("facade.py", "subscriptions.py", "publishing.py", "auth.py")
        source = "".join((gateway / module).read_text() for module in modules)
        prefixes = set(re.findall(r'f?"([a-z]+(?:-[a-z]+)*): ', source))
        self.assertIn("blocked", prefixes)
        readme = (ROOT / "README.md").read_text()
        self.assertEqual({p for p in prefixes if f"`{p}:`" not in readme}, set())

    def test_readmeLinksExist(self) -> None:
        """
        The files the README links to are in the repository.
        """
        readme = (ROOT / "README.md").read_text()
        links = re.findall(r"\]\(([^)#:]+)\)", readme)
        self.assertIn("docs/DESIGN.md", links)
        self.assertEqual([link for link in links if not (ROOT / link).is_file()], [])

    def test_licenseFiles(self) -> None:
        """
        setup.cfg names its license files, and they exist and carry the
        license its metadata declares.
        """
        setup = configparser.ConfigParser()
        setup.read(ROOT / "setup.cfg")
        metadata = setup["metadata"]
        files = metadata["license_files"].split()
        self.assertEqual(files, ["LICENSE"])
        text = (ROOT / "LICENSE").read_text()
        self.assertTrue(text.startswith(f"{metadata['license']} License"), text[:40])
        self.assertIn("2026 the relaypool authors", text)
