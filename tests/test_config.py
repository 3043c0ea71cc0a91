"""
Tests for L{relaypool.daemon.config}: defaults, TOML files, environment
variables, command-line overrides and validation errors that name their key.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from relaypool.daemon.config import (
    SETTINGS,
    Config,
    ConfigSources,
    RelaySpec,
    buildConfig,
    environmentValues,
    loadConfigFile,
    validateRelayURL,
)
from relaypool.errors import ConfigError, InvalidRelayURL
from relaypool.gateway.limits import GatewayLimits


class DefaultsTests(SynchronousTestCase):
    """
    L{Config}'s defaults.
    """

    def test_noSettings(self) -> None:
        """
        With no settings, L{buildConfig} gives L{Config}'s defaults.
        """
        self.assertEqual(buildConfig(), Config())

    def test_documentedDefaults(self) -> None:
        """
        The defaults are those the daemon documents: listen on
        127.0.0.1:7777, no relays, the store C{relaypool.db}, quorum 1, a
        week of outbox retries, status lines every minute.
        """
        config = Config()
        self.assertEqual(
            (
                config.listen,
                config.relays,
                config.store,
                config.quorum,
                config.outboxMaxAge,
                config.statusInterval,
                config.verify,
                config.authRequired,
            ),
            ("tcp:7777:interface=127.0.0.1", (), "relaypool.db", 1, 7 * 86400.0, 60.0, True, False),
        )

    def test_gatewayDefaultsFromLimits(self) -> None:
        """
        The gateway limits default to L{GatewayLimits}' defaults.
        """
        self.assertEqual(Config().limits, GatewayLimits())

    def test_requestHeadBounds(self) -> None:
        """
        C{max-request-line}, C{max-header-bytes} and C{max-headers} reach the
        gateway limits.
        """
        limits = buildConfig(
            overrides={"max-request-line": "100", "max-header-bytes": "200", "max-headers": "3"}
        ).limits
        self.assertEqual(
            (limits.maxRequestLine, limits.maxHeaderBytes, limits.maxHeaders), (100, 200, 3)
        )

    def test_everySettingHasADefault(self) -> None:
        """
        Every setting names a L{Config} attribute or a L{GatewayLimits} field
        (in L{Config.limits}), and every one of those has a setting.
        """
        attributes = set(Config.__dataclass_fields__) - {"limits"}
        attributes |= set(GatewayLimits.__dataclass_fields__)
        self.assertEqual(sorted(s.attribute for s in SETTINGS), sorted(attributes))

    def test_okPolicyAutoWithRelays(self) -> None:
        """
        The C{auto} OK policy is C{quorum} when relays are configured.
        """
        self.assertEqual(Config(relays=(RelaySpec("ws://a"),)).effectiveOkPolicy(), "quorum")

    def test_okPolicyAutoWithoutRelays(self) -> None:
        """
        The C{auto} OK policy is C{local} without relays.
        """
        self.assertEqual(Config().effectiveOkPolicy(), "local")


class FileTests(SynchronousTestCase):
    """
    L{loadConfigFile} and file values.
    """

    def _write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_parse(self) -> None:
        """
        A TOML file's keys, with dashes, set the matching settings.
        """
        path = self._write(
            'relays = ["wss://relay.example.com", "ws://127.0.0.1:7000"]\n'
            "connections-per-address = 2\n"
            "quorum = 2\n"
            "eose-timeout = 3\n"
            "verify = false\n"
            "auth-required = true\n"
            'store = ":memory:"\n'
        )
        config = buildConfig(loadConfigFile(path))
        self.assertEqual(
            (
                config.relayURLs(),
                config.connectionsPerAddress,
                config.quorum,
                config.eoseTimeout,
                config.verify,
                config.authRequired,
                config.store,
            ),
            (
                ("wss://relay.example.com", "ws://127.0.0.1:7000"),
                2,
                2,
                3.0,
                False,
                True,
                ":memory:",
            ),
        )

    def test_exampleFile(self) -> None:
        """
        The example config shipped in C{examples/} is valid.
        """
        from pathlib import Path

        path = Path(__file__).parent.parent / "examples" / "relaypool.toml"
        config = buildConfig(loadConfigFile(str(path)))
        self.assertEqual(config.relayURLs(), ("wss://relay.damus.io", "wss://nos.lol"))

    def test_missingFile(self) -> None:
        """
        A file that cannot be read is a L{ConfigError} on key C{config}.
        """
        error = self.assertRaises(ConfigError, loadConfigFile, self.mktemp())
        self.assertEqual(error.key, "config")
        self.assertIn("cannot read", str(error))

    def test_notTOML(self) -> None:
        """
        A file that is not TOML is a L{ConfigError} on key C{config}.
        """
        error = self.assertRaises(ConfigError, loadConfigFile, self._write("quorum = = 2\n"))
        self.assertEqual(error.key, "config")
        self.assertIn("not valid TOML", str(error))

    def test_stringForNumberInFile(self) -> None:
        """
        A number written as a string in the file is an error: files are
        typed.
        """
        error = self.assertRaises(ConfigError, buildConfig, {"quorum": "2"})
        self.assertEqual(str(error), 'quorum: must be a positive integer, got "2"')

    def test_floatForInteger(self) -> None:
        """
        A float where an integer is needed is an error.
        """
        error = self.assertRaises(ConfigError, buildConfig, {"max-relays": 2.5})
        self.assertEqual(str(error), "max-relays: must be a positive integer, got 2.5")

    def test_integerForFloat(self) -> None:
        """
        An integer where seconds are needed is accepted as a float.
        """
        self.assertEqual(buildConfig({"publish-timeout": 4}).publishTimeout, 4.0)


class OverrideTests(SynchronousTestCase):
    """
    Command-line values in L{buildConfig}'s C{overrides}.
    """

    def test_overridesFile(self) -> None:
        """
        A command-line value replaces the file's.
        """
        config = buildConfig({"quorum": 2, "relays": ["ws://a", "ws://b"]}, {"quorum": "1"})
        self.assertEqual(config.quorum, 1)

    def test_fileKeptWhenNotOverridden(self) -> None:
        """
        File values the command line does not give are kept.
        """
        config = buildConfig({"max-relays": 5}, {"quorum": "1"})
        self.assertEqual(config.maxRelays, 5)

    def test_textParsed(self) -> None:
        """
        Command-line numbers arrive as text and are parsed.
        """
        config = buildConfig(overrides={"eose-timeout": "2.5", "dedup-size": "100"})
        self.assertEqual((config.eoseTimeout, config.dedupSize), (2.5, 100))

    def test_duplicateRelays(self) -> None:
        """
        A relay given twice is kept once, in its first place, also when it
        is written differently (C{ws://a} and C{ws://a/}).
        """
        config = buildConfig(overrides={"relays": ["ws://b", "ws://a", "ws://b", "ws://a/"]})
        self.assertEqual(config.relayURLs(), ("ws://b", "ws://a"))


class ValidationTests(SynchronousTestCase):
    """
    Every invalid value is a L{ConfigError} whose text starts with its key.
    """

    def assertInvalid(self, key: str, value: object, message: str) -> None:
        error = self.assertRaises(ConfigError, buildConfig, overrides={key: value})
        self.assertEqual((error.key, str(error)), (key, f"{key}: {message}"))

    def test_notAnInteger(self) -> None:
        """
        Text that is not an integer.
        """
        self.assertInvalid("quorum", "two", 'must be a positive integer, got "two"')

    def test_zero(self) -> None:
        """
        Zero where a positive integer is needed.
        """
        self.assertInvalid("connections-per-address", "0", 'must be a positive integer, got "0"')

    def test_negativeCount(self) -> None:
        """
        A negative store bound.
        """
        self.assertInvalid("store-max-events", "-1", 'must be an integer >= 0, got "-1"')

    def test_badSeconds(self) -> None:
        """
        Seconds that are not a number, zero, or not finite.
        """
        for value in ("soon", "0", "nan", "inf"):
            self.assertInvalid(
                "eose-timeout", value, f'must be a number of seconds >= 0.001, got "{value}"'
            )

    def test_statusIntervalZero(self) -> None:
        """
        A status interval of 0 (no status lines) is valid, a negative one is
        not.
        """
        self.assertEqual(buildConfig(overrides={"status-interval": "0"}).statusInterval, 0.0)
        self.assertInvalid("status-interval", "-1", 'must be a number of seconds >= 0, got "-1"')

    def test_statusPageBounds(self) -> None:
        """
        The status page samples every positive number of seconds and keeps
        at least 2 samples (one rate); less is refused with the bound.
        """
        config = buildConfig(
            overrides={"status-page-interval": "0.5", "status-page-history": "2"}
        )
        self.assertEqual((config.statusPageInterval, config.statusPageHistory), (0.5, 2))
        self.assertInvalid(
            "status-page-interval", "0", 'must be a number of seconds >= 0.001, got "0"'
        )
        self.assertInvalid("status-page-history", "1", 'must be an integer >= 2, got "1"')

    def test_boolean(self) -> None:
        """
        A flag that is not a boolean.
        """
        self.assertInvalid("auth-required", "yes", 'must be true or false, got "yes"')

    def test_okPolicy(self) -> None:
        """
        An unknown OK policy.
        """
        self.assertInvalid(
            "ok-policy", "always", 'must be one of "auto", "quorum", "local", got "always"'
        )

    def test_emptyText(self) -> None:
        """
        An empty name.
        """
        self.assertInvalid("name", " ", 'must be a non-empty string, got " "')

    def test_storeDirectoryMissing(self) -> None:
        """
        A store file in a directory that does not exist.
        """
        path = os.path.abspath(self.mktemp())
        self.assertInvalid(
            "store",
            os.path.join(path, "x.db"),
            f'the directory {path} of "{os.path.join(path, "x.db")}" does not exist',
        )

    def test_storeInMemory(self) -> None:
        """
        C{:memory:} is a valid store.
        """
        self.assertEqual(buildConfig(overrides={"store": ":memory:"}).store, ":memory:")

    def test_listen(self) -> None:
        """
        A listen value that is not an endpoint string.
        """
        error = self.assertRaises(ConfigError, buildConfig, overrides={"listen": "carrier:7"})
        self.assertEqual(error.key, "listen")
        self.assertTrue(
            str(error).startswith('listen: "carrier:7" is not a Twisted server endpoint string')
        )

    def test_listenSystemdWithoutSocket(self) -> None:
        """
        A C{systemd:} endpoint in a process systemd passed no socket to is
        refused, saying how the socket is passed.
        """
        error = self.assertRaises(
            ConfigError, buildConfig, overrides={"listen": "systemd:domain=INET:index=0"}
        )
        self.assertEqual(
            str(error),
            'listen: "systemd:domain=INET:index=0": systemd passed no such socket to this'
            " process (start it from a .socket unit; LISTEN_FDS, LISTEN_PID and"
            " LISTEN_FDNAMES must be set)",
        )

    def test_relayScheme(self) -> None:
        """
        A relay URL that is not ws:// or wss://.
        """
        self.assertInvalid(
            "relays",
            ["https://relay.example"],
            '"https://relay.example" is not a ws:// or wss:// URL',
        )

    def test_relayNoHost(self) -> None:
        """
        A relay URL with no host.
        """
        self.assertInvalid("relays", ["ws://"], '"ws://" has no host')

    def test_relayBadPort(self) -> None:
        """
        A relay URL with a port that is not a number.
        """
        error = self.assertRaises(ConfigError, buildConfig, overrides={"relays": ["ws://a:x"]})
        self.assertTrue(str(error).startswith('relays: "ws://a:x" is not a valid URL'))

    def test_relaysNotAList(self) -> None:
        """
        A single string where the relay list is expected.
        """
        self.assertInvalid(
            "relays",
            "ws://a",
            'must be a list of ws:// or wss:// URLs or relay tables, got "ws://a"',
        )

    def test_relayURL(self) -> None:
        """
        The gateway's public URL must be a relay URL.
        """
        self.assertInvalid("relay-url", "http://me", '"http://me" is not a ws:// or wss:// URL')

    def test_unknownKey(self) -> None:
        """
        An unknown key is an error naming it, with a suggestion when one is
        close.
        """
        error = self.assertRaises(ConfigError, buildConfig, {"max_relays": 3})
        self.assertEqual(str(error), "max_relays: unknown setting (did you mean max-relays?)")

    def test_unknownKeyNoSuggestion(self) -> None:
        """
        An unknown key far from any is an error naming it alone.
        """
        error = self.assertRaises(ConfigError, buildConfig, {"colour": "blue"})
        self.assertEqual(str(error), "colour: unknown setting")

    def test_limitCheckNamesTheOption(self) -> None:
        """
        A gateway limit that L{GatewayLimits} refuses is an error naming the
        option, not the field.
        """
        error = self.assertRaises(
            ConfigError, buildConfig, None, {"max-subscription-id-length": "65"}
        )
        self.assertEqual(
            str(error), "max-subscription-id-length: must be at most 64 (NIP-01), got 65"
        )

    def test_fileErrorsNameTheFile(self) -> None:
        """
        An unknown or invalid key from a config file names the file; the same
        mistake on the command line does not.
        """
        unknown = self.assertRaises(
            ConfigError, buildConfig, {"quorom": 1}, None, "/etc/relaypool.toml"
        )
        invalid = self.assertRaises(
            ConfigError, buildConfig, {"quorum": "two"}, None, "/etc/relaypool.toml"
        )
        overridden = self.assertRaises(
            ConfigError, buildConfig, {}, {"quorum": "two"}, "/etc/relaypool.toml"
        )
        self.assertEqual(
            [str(unknown), str(invalid), str(overridden)],
            [
                "quorom: unknown setting (did you mean quorum?) (in /etc/relaypool.toml)",
                'quorum: must be a positive integer, got "two" (in /etc/relaypool.toml)',
                'quorum: must be a positive integer, got "two"',
            ],
        )

    def test_quorumOverRelays(self) -> None:
        """
        A quorum larger than the number of (write) relays is an error on
        C{quorum}.
        """
        error = self.assertRaises(ConfigError, buildConfig, {"relays": ["ws://a"]}, {"quorum": "2"})
        self.assertEqual(
            str(error), "quorum: must be at most the number of write relays (1), got 2"
        )

    def test_tooManyRelays(self) -> None:
        """
        More relays than C{max-relays} is an error on C{relays}.
        """
        error = self.assertRaises(
            ConfigError, buildConfig, {"relays": ["ws://a", "ws://b"], "max-relays": 1}
        )
        self.assertEqual(str(error), "relays: 2 relays are more than max-relays (1)")

    def test_quorumPolicyWithoutRelays(self) -> None:
        """
        The C{quorum} OK policy without relays is an error on C{ok-policy}.
        """
        error = self.assertRaises(ConfigError, buildConfig, {"ok-policy": "quorum"})
        self.assertEqual(error.key, "ok-policy")


class ValidateRelayURLTests(SynchronousTestCase):
    """
    L{validateRelayURL}.
    """

    def test_valid(self) -> None:
        """
        A ws:// or wss:// URL with a host is returned without surrounding
        blanks.
        """
        self.assertEqual(
            validateRelayURL(" wss://relay.example:443/x "), "wss://relay.example:443/x"
        )

    def test_invalid(self) -> None:
        """
        Anything else raises L{InvalidRelayURL}.
        """
        for url in ("relay.example", "http://relay.example", "ws:///path", "ws://[::1"):
            self.assertRaises(InvalidRelayURL, validateRelayURL, url)


class EnvironmentTests(SynchronousTestCase):
    """
    Settings given as C{RELAYPOOL_<KEY>} environment variables.
    """

    def build(self, environ: dict[str, str], **kwargs: object) -> Config:
        return buildConfig(environment=environmentValues(environ), **kwargs)  # type: ignore[arg-type]

    def test_everySettingHasAVariable(self) -> None:
        """
        Every setting has a variable: C{RELAYPOOL_} and its key upper-cased
        with C{_} for C{-}.
        """
        names = {setting.key: setting.variable() for setting in SETTINGS}
        self.assertEqual(
            (names["quorum"], names["dedup-size"], names["max-connections-per-ip"]),
            ("RELAYPOOL_QUORUM", "RELAYPOOL_DEDUP_SIZE", "RELAYPOOL_MAX_CONNECTIONS_PER_IP"),
        )
        self.assertEqual(len(set(names.values())), len(SETTINGS))

    def test_number(self) -> None:
        """
        C{RELAYPOOL_QUORUM=2} sets the quorum; numbers are parsed from text.
        """
        config = self.build(
            {
                "RELAYPOOL_QUORUM": "2",
                "RELAYPOOL_RELAYS": "ws://a ws://b",
                "RELAYPOOL_MAX_LAG": "2.5",
            }
        )
        self.assertEqual((config.quorum, config.limits.maxLag), (2, 2.5))

    def test_relaysList(self) -> None:
        """
        C{RELAYPOOL_RELAYS} is a list of URLs separated by commas and/or
        blanks.
        """
        config = self.build({"RELAYPOOL_RELAYS": " ws://a, ws://b\n\twss://c ,"})
        self.assertEqual(
            config.relays, (RelaySpec("ws://a"), RelaySpec("ws://b"), RelaySpec("wss://c"))
        )

    def test_flags(self) -> None:
        """
        A flag is true, yes or 1, or false, no or 0, in any case.
        """
        for text, value in (
            ("true", True),
            ("YES", True),
            ("1", True),
            ("False", False),
            ("no", False),
            ("0", False),
        ):
            config = self.build({"RELAYPOOL_AUTH_REQUIRED": text, "RELAYPOOL_VERIFY": text})
            self.assertEqual((config.authRequired, config.verify), (value, value), text)

    def test_badFlag(self) -> None:
        """
        Another flag value is an error naming the variable.
        """
        error = self.assertRaises(ConfigError, environmentValues, {"RELAYPOOL_VERIFY": "maybe"})
        self.assertEqual(
            str(error), 'RELAYPOOL_VERIFY: must be true or false (or yes, no, 1, 0), got "maybe"'
        )

    def test_badValueNamesVariable(self) -> None:
        """
        An invalid value is an error naming the variable, not the key.
        """
        error = self.assertRaises(ConfigError, self.build, {"RELAYPOOL_QUORUM": "two"})
        self.assertEqual(str(error), 'RELAYPOOL_QUORUM: must be a positive integer, got "two"')
        error = self.assertRaises(ConfigError, self.build, {"RELAYPOOL_RELAYS": "http://a"})
        self.assertEqual(error.key, "RELAYPOOL_RELAYS")

    def test_unknownVariable(self) -> None:
        """
        An unknown C{RELAYPOOL_} variable is an error naming it, with the
        closest known one as a hint.
        """
        error = self.assertRaises(ConfigError, environmentValues, {"RELAYPOOL_QUORAM": "2"})
        self.assertEqual(
            str(error), "RELAYPOOL_QUORAM: unknown setting (did you mean RELAYPOOL_QUORUM?)"
        )

    def test_otherVariablesIgnored(self) -> None:
        """
        Variables without the prefix, C{RELAYPOOL_CONFIG} and
        C{RELAYPOOL_KEY} (the signing key of C{relaypool publish}) are not
        settings, and not refused.
        """
        values = environmentValues(
            {
                "PATH": "/bin",
                "RELAYPOOLQUORUM": "x",
                "RELAYPOOL_CONFIG": "a.toml",
                "RELAYPOOL_KEY": "ab" * 32,
            }
        )
        self.assertEqual(values, {})

    def test_precedence(self) -> None:
        """
        The command line overrides the environment, which overrides the
        file, which overrides the default.
        """
        config = self.build(
            {"RELAYPOOL_DEDUP_SIZE": "20", "RELAYPOOL_MAX_RELAYS": "7"},
            fileValues={"dedup-size": 10, "max-relays": 5, "ring-capacity": 3},
            overrides={"dedup-size": "30"},
        )
        self.assertEqual(
            (config.dedupSize, config.maxRelays, config.ringCapacity, config.limits.maxFilters),
            (30, 7, 3, Config().limits.maxFilters),
        )


class ConfigSourcesTests(SynchronousTestCase):
    """
    L{ConfigSources} reads the settings again from their sources.
    """

    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_configVariable(self) -> None:
        """
        Without C{--config}, C{RELAYPOOL_CONFIG} names the file; only the
        C{RELAYPOOL_} variables are kept.
        """
        path = self.write("quorum = 2\nrelays = ['ws://a', 'ws://b']\n")
        sources = ConfigSources.fromEnvironment(
            {"RELAYPOOL_CONFIG": path, "HOME": "/root"}, None, {}
        )
        self.assertEqual(
            (sources.path, dict(sources.environment)), (path, {"RELAYPOOL_CONFIG": path})
        )
        self.assertEqual(sources.load().quorum, 2)

    def test_configOptionWins(self) -> None:
        """
        C{--config} overrides C{RELAYPOOL_CONFIG}.
        """
        sources = ConfigSources.fromEnvironment({"RELAYPOOL_CONFIG": "env.toml"}, "cli.toml", {})
        self.assertEqual(sources.path, "cli.toml")

    def test_loadReadsTheFileAgain(self) -> None:
        """
        L{ConfigSources.load} reads the file each time, with the environment
        and the command line still over it.
        """
        path = self.write("dedup-size = 5\nmax-relays = 5\n")
        sources = ConfigSources(path, {"RELAYPOOL_MAX_RELAYS": "9"}, {"quorum": "1"})
        self.assertEqual(sources.load().dedupSize, 5)
        with open(path, "w") as f:
            f.write("dedup-size = 6\nmax-relays = 6\nquorum = 3\n")
        config = sources.load()
        self.assertEqual((config.dedupSize, config.maxRelays, config.quorum), (6, 9, 1))


PUBKEY = "ab" * 32


class PolicySettingsTests(SynchronousTestCase):
    """
    The event policy and management API settings.
    """

    def test_defaults(self) -> None:
        """
        By default nothing is allowed or denied, publishing is open, and the
        management API is off with a 60-second NIP-98 window.
        """
        config = Config()
        self.assertEqual(
            (
                config.allowPubkeys,
                config.denyPubkeys,
                config.allowKinds,
                config.denyKinds,
                config.writeRestricted,
                config.adminPubkeys,
                config.adminAuthWindow,
                config.limits.maxBodyBytes,
            ),
            ((), (), (), (), False, (), 60.0, 65536),
        )

    def test_policy(self) -> None:
        """
        The lists and C{write-restricted} make the gateway's policy; pubkeys
        are lowercased and kept once each.
        """
        config = buildConfig(
            {
                "allow-pubkeys": [PUBKEY.upper(), PUBKEY],
                "deny-pubkeys": ["cd" * 32],
                "allow-kinds": [1, 7],
                "deny-kinds": [4],
                "write-restricted": True,
            }
        )
        policy = config.eventPolicy()
        self.assertEqual(
            (
                dict(policy.allowedPubkeys),
                dict(policy.bannedPubkeys),
                policy.allowedKinds,
                policy.disallowedKinds,
                policy.writeRestricted,
            ),
            ({PUBKEY: ""}, {"cd" * 32: ""}, {1, 7}, {4}, True),
        )

    def test_badPubkey(self) -> None:
        """
        A pubkey that is not 64 hex characters is an error naming the key
        and the value.
        """
        error = self.assertRaises(ConfigError, buildConfig, {"deny-pubkeys": [PUBKEY, "npub1xyz"]})
        self.assertEqual(
            str(error), 'deny-pubkeys: "npub1xyz" is not a public key in hex (64 hex characters)'
        )

    def test_badKind(self) -> None:
        """
        A kind outside 0-65535 is an error naming the key.
        """
        error = self.assertRaises(ConfigError, buildConfig, {"allow-kinds": [70000]})
        self.assertEqual(str(error), "allow-kinds: 70000 is not an event kind (an integer 0-65535)")

    def test_notAList(self) -> None:
        """
        A single value where a list is expected is an error naming the key.
        """
        error = self.assertRaises(ConfigError, buildConfig, {"admin-pubkeys": PUBKEY})
        self.assertIn("admin-pubkeys: must be a list of public keys in hex", str(error))

    def test_allowWithoutWriteRestricted(self) -> None:
        """
        Allowed pubkeys without C{write-restricted} are an error saying
        what to do, since they would restrict nothing.
        """
        error = self.assertRaises(ConfigError, buildConfig, {"allow-pubkeys": [PUBKEY]})
        self.assertIn("allow-pubkeys: only matters with write-restricted", str(error))

    def test_adminSettings(self) -> None:
        """
        C{admin-pubkeys}, C{admin-auth-window} and C{max-body-bytes} are
        read, from text on the command line too.
        """
        config = buildConfig(
            {"admin-pubkeys": [PUBKEY]},
            {"admin-auth-window": "30", "max-body-bytes": "1024"},
        )
        self.assertEqual(
            (config.adminPubkeys, config.adminAuthWindow, config.limits.maxBodyBytes),
            ((PUBKEY,), 30.0, 1024),
        )


class RelayRolesTests(SynchronousTestCase):
    """
    Relays with roles: TOML tables, their errors, and the checks that count
    write relays.
    """

    def _load(self, text: str) -> Config:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return buildConfig(loadConfigFile(path), fileName="relaypool.toml")

    def assertInvalidRelays(self, relays: object, message: str) -> None:
        error = self.assertRaises(ConfigError, buildConfig, {"relays": relays}, None, "f.toml")
        self.assertEqual(str(error), f"relays: {message} (in f.toml)")

    def test_tablesAndStrings(self) -> None:
        """
        C{relays} mixes URLs (read and write) and tables, whose missing
        C{read} and C{write} are true and missing C{discovery} false.
        """
        config = self._load(
            "relays = [\n"
            '  "wss://both.example",\n'
            '  {url = "wss://read.example", write = false},\n'
            '  {url = "wss://write.example", read = false},\n'
            '  {url = "wss://lists.example", read = false, write = false, discovery = true},\n'
            '  {url = "wss://all.example", discovery = true},\n'
            "]\n"
        )
        self.assertEqual(
            config.relays,
            (
                RelaySpec("wss://both.example"),
                RelaySpec("wss://read.example", read=True, write=False),
                RelaySpec("wss://write.example", read=False, write=True),
                RelaySpec("wss://lists.example", read=False, write=False, discovery=True),
                RelaySpec("wss://all.example", discovery=True),
            ),
        )

    def test_relayURLsByRole(self) -> None:
        """
        L{Config.relayURLs} gives every relay's URL, or those with a role.
        """
        config = self._load(
            'relays = ["ws://a", {url = "ws://r", write = false},'
            ' {url = "ws://d", read = false, write = false, discovery = true}]\n'
        )
        self.assertEqual(
            [config.relayURLs(role) for role in (None, "read", "write", "discovery")],
            [("ws://a", "ws://r", "ws://d"), ("ws://a", "ws://r"), ("ws://a",), ("ws://d",)],
        )

    def test_sameRelayMerged(self) -> None:
        """
        A relay given twice (also written differently) is one relay with
        every role given to it, in its first place and spelling.
        """
        config = buildConfig(
            {
                "relays": [
                    {"url": "wss://a.example", "write": False},
                    "wss://b.example",
                    {"url": "WSS://a.example/", "read": False, "write": False, "discovery": True},
                ]
            }
        )
        self.assertEqual(
            config.relays,
            (
                RelaySpec("wss://a.example", read=True, write=False, discovery=True),
                RelaySpec("wss://b.example"),
            ),
        )

    def test_unknownKey(self) -> None:
        """
        A table with an unknown key is an error naming the table, the key,
        the closest known one and the known keys.
        """
        self.assertInvalidRelays(
            [{"url": "ws://a", "writ": False}],
            '{url = "ws://a", writ = false}: unknown key "writ" (did you mean write?);'
            " a relay table has url, read, write and discovery",
        )

    def test_notABoolean(self) -> None:
        """
        A role that is not true or false is an error naming the table.
        """
        self.assertInvalidRelays(
            [{"url": "ws://a", "read": "yes"}],
            '{url = "ws://a", read = "yes"}: read must be true or false, got "yes"',
        )

    def test_noURL(self) -> None:
        """
        A table without C{url} is an error showing how to write one.
        """
        self.assertInvalidRelays(
            [{"read": True}],
            '{read = true} has no url: write it as {url = "wss://...", read = true,'
            " write = false, discovery = false}",
        )

    def test_badURL(self) -> None:
        """
        A table whose C{url} is not a relay URL is an error naming both.
        """
        self.assertInvalidRelays(
            [{"url": "https://a"}],
            '{url = "https://a"}: url "https://a" is not a ws:// or wss:// URL',
        )

    def test_noRole(self) -> None:
        """
        A relay with no role is an error saying what to write.
        """
        self.assertInvalidRelays(
            [{"url": "ws://a", "read": False, "write": False}],
            '{url = "ws://a", read = false, write = false} has no role: set read, write or'
            " discovery to true, or remove the relay",
        )

    def test_neitherURLNorTable(self) -> None:
        """
        An item that is neither a URL nor a table is an error showing both
        forms.
        """
        self.assertInvalidRelays(
            [7],
            "a relay is a ws:// or wss:// URL or a table such as"
            ' {url = "wss://...", read = true, write = false, discovery = false}, got 7',
        )

    def test_quorumCountsWriteRelays(self) -> None:
        """
        The quorum may be at most the number of write relays; read and
        discovery relays do not count.
        """
        relays = [
            "ws://a",
            "ws://b",
            {"url": "ws://r", "write": False},
            {"url": "ws://d", "read": False, "write": False, "discovery": True},
        ]
        self.assertEqual(buildConfig({"relays": relays, "quorum": 2}).quorum, 2)
        error = self.assertRaises(ConfigError, buildConfig, {"relays": relays, "quorum": 3})
        self.assertEqual(
            str(error), "quorum: must be at most the number of write relays (2), got 3"
        )

    def test_quorumPolicyNeedsWriteRelay(self) -> None:
        """
        The C{quorum} OK policy with only read relays is an error; C{auto}
        is then C{local}.
        """
        relays = [{"url": "ws://r", "write": False}]
        error = self.assertRaises(
            ConfigError, buildConfig, {"relays": relays, "ok-policy": "quorum"}
        )
        self.assertEqual(
            str(error), 'ok-policy: "quorum" needs at least one write relay: add one or use "local"'
        )
        self.assertEqual(buildConfig({"relays": relays}).effectiveOkPolicy(), "local")

    def test_syncNeedsReadOrWriteRelay(self) -> None:
        """
        Sync filters with only discovery relays are an error: discovery
        relays are not synced.
        """
        relays = [{"url": "ws://d", "read": False, "write": False, "discovery": True}]
        error = self.assertRaises(
            ConfigError, buildConfig, {"relays": relays, "sync-filters": [{"kinds": [0]}]}
        )
        self.assertIn(
            "sync-filters: needs relays to sync with: add a read or write relay", str(error)
        )

    def test_maxRelaysCountsEveryRole(self) -> None:
        """
        C{max-relays} bounds the configured relays of every role.
        """
        relays = ["ws://a", {"url": "ws://d", "read": False, "write": False, "discovery": True}]
        error = self.assertRaises(ConfigError, buildConfig, {"relays": relays, "max-relays": 1})
        self.assertEqual(str(error), "relays: 2 relays are more than max-relays (1)")

    def test_roleVariables(self) -> None:
        """
        C{RELAYPOOL_READ_RELAYS}, C{RELAYPOOL_WRITE_RELAYS} and
        C{RELAYPOOL_DISCOVERY_RELAYS} add relays with that role alone to
        C{RELAYPOOL_RELAYS}'s, together replacing the file's relays.
        """
        environment = environmentValues(
            {
                "RELAYPOOL_RELAYS": "ws://a",
                "RELAYPOOL_READ_RELAYS": "ws://r1, ws://r2",
                "RELAYPOOL_WRITE_RELAYS": "ws://w",
                "RELAYPOOL_DISCOVERY_RELAYS": "ws://d",
            }
        )
        config = buildConfig({"relays": ["ws://file"]}, environment=environment)
        self.assertEqual(
            sorted((spec.url, spec.roles()) for spec in config.relays),
            [
                ("ws://a", ("read", "write")),
                ("ws://d", ("discovery",)),
                ("ws://r1", ("read",)),
                ("ws://r2", ("read",)),
                ("ws://w", ("write",)),
            ],
        )

    def test_roleVariableError(self) -> None:
        """
        An invalid URL in a role variable is an error naming the variable.
        """
        error = self.assertRaises(
            ConfigError, environmentValues, {"RELAYPOOL_WRITE_RELAYS": "http://w"}
        )
        self.assertEqual(
            str(error), 'RELAYPOOL_WRITE_RELAYS: "http://w" is not a ws:// or wss:// URL'
        )


class RelayPatternSettingsTests(SynchronousTestCase):
    """
    C{relay-allow}, C{relay-deny} and the outbox model's settings.
    """

    def test_patterns(self) -> None:
        """
        The patterns make the pool's admit policy; without any there is
        none.
        """
        config = buildConfig(
            {"relay-allow": ["wss://*"], "relay-deny": ["*.onion", "wss://bad.example/"]}
        )
        admit = config.admitPolicy()
        assert admit is not None
        self.assertEqual(
            [admit("wss://good.example/"), admit("wss://x.onion/"), admit("ws://plain.example/")],
            [True, False, False],
        )
        self.assertIsNone(buildConfig().admitPolicy())

    def test_patternWithBlank(self) -> None:
        """
        A pattern with a blank is an error naming the key.
        """
        error = self.assertRaises(ConfigError, buildConfig, {"relay-deny": ["a b"]})
        self.assertEqual(
            str(error),
            'relay-deny: must be a shell pattern without blanks such as "*.onion" or'
            ' "wss://relay.example/", got "a b"',
        )

    def test_denyRefusesConfiguredRelay(self) -> None:
        """
        A configured relay a deny pattern refuses is an error on
        C{relay-deny} naming the relay and the pattern.
        """
        error = self.assertRaises(
            ConfigError,
            buildConfig,
            {"relays": ["wss://ok.example", "ws://x.onion"], "relay-deny": ["*.onion"]},
        )
        self.assertEqual(
            str(error),
            "relay-deny: refuses the configured relay ws://x.onion (it matches the deny"
            " pattern '*.onion'): remove the relay or change the pattern",
        )

    def test_allowRefusesConfiguredRelay(self) -> None:
        """
        A configured relay no allow pattern matches is an error on
        C{relay-allow} naming the relay and the patterns.
        """
        error = self.assertRaises(
            ConfigError, buildConfig, {"relays": ["ws://a"], "relay-allow": ["*.example"]}
        )
        self.assertEqual(
            str(error),
            "relay-allow: refuses the configured relay ws://a (it matches no allow pattern"
            " ('*.example')): remove the relay or change the pattern",
        )

    def test_outboxSettings(self) -> None:
        """
        The outbox model is off by default with 2 relays per author and 300
        seconds of idle time; the command line gives them as text.
        """
        self.assertEqual(
            (Config().outboxModel, Config().outboxRelaysPerAuthor, Config().outboxIdleTimeout),
            (False, 2, 300.0),
        )
        config = buildConfig(
            {"relays": ["ws://a"]},
            {"outbox-model": True, "outbox-relays-per-author": "3", "outbox-idle-timeout": "0"},
        )
        self.assertEqual(
            (config.outboxModel, config.outboxRelaysPerAuthor, config.outboxIdleTimeout),
            (True, 3, 0.0),
        )

    def test_outboxSettingErrors(self) -> None:
        """
        Relays per author must be positive, the idle timeout not negative.
        """
        error = self.assertRaises(ConfigError, buildConfig, {"outbox-relays-per-author": 0})
        self.assertEqual(str(error), "outbox-relays-per-author: must be a positive integer, got 0")
        error = self.assertRaises(ConfigError, buildConfig, {"outbox-idle-timeout": -1})
        self.assertEqual(
            str(error), "outbox-idle-timeout: must be a number of seconds >= 0, got -1"
        )
        error = self.assertRaises(ConfigError, buildConfig, {"outbox-lookup-timeout": -1})
        self.assertEqual(
            str(error), "outbox-lookup-timeout: must be a number of seconds >= 0, got -1"
        )
        for key in ("outbox-relay-lists", "outbox-max-tagged"):
            error = self.assertRaises(ConfigError, buildConfig, {key: 0})
            self.assertEqual(str(error), f"{key}: must be a positive integer, got 0")

    def test_outboxModelNeedsRelays(self) -> None:
        """
        The outbox model without relays is an error: there is no pool.
        """
        error = self.assertRaises(ConfigError, buildConfig, {"outbox-model": True})
        self.assertIn("outbox-model: needs relays", str(error))
