"""iptables through its restore/save tools: backend detection, atomic
transactions, and finding what of ours is in the kernel.

Parsing and the leftover sweep are pure (text in, text out) so they are unit
tested without root; `Iptables` is the thin layer that runs the tools.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field

from tng_nfq.netfilter.plan import CHAIN_PREFIX

# An empty chain we declare in a table that did not exist before us: it
# survives a crash, so whoever sweeps later knows the (then empty) table can
# be deleted to leave the namespace as it was (nft backend).
TABLE_MARKER = f"{CHAIN_PREFIX}MADE_TABLE"
BACKEND_ENV = "TNG_NFQ_IPTABLES"  # "nft" | "legacy": override the detection
BUILTIN_CHAINS = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}
RESTORE_TIMEOUT = 30.0


class IptablesError(RuntimeError):
    """An iptables tool failed; the message carries its stderr."""


def backend_from_version(text: str) -> str:
    """'nft' or 'legacy' from `iptables -V` output ("iptables v1.8.9 (nf_tables)").

    iptables before 1.8 has no suffix and only a legacy backend."""
    if "(nf_tables)" in text:
        return "nft"
    if "(legacy)" in text or re.match(r"iptables v1\.[0-7]\.", text.strip()):
        return "legacy"
    raise IptablesError(f"cannot tell the iptables backend from {text.strip()!r}")


@dataclass
class TableState:
    chains: list[str] = field(default_factory=list)  # user-defined chains, in save order
    rules: list[tuple[str, str]] = field(default_factory=list)  # (chain, spec) in save order
    policies: dict[str, str] = field(default_factory=dict)  # built-in chain -> policy

    @property
    def pristine(self) -> bool:
        """Nothing in it: no rule, no user chain, every policy ACCEPT."""
        return not self.chains and not self.rules and all(p == "ACCEPT" for p in self.policies.values())


def parse_save(text: str) -> dict[str, TableState]:
    """iptables-save output -> {table: chains and rules}."""
    tables: dict[str, TableState] = {}
    current: TableState | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:], TableState())
        elif line == "COMMIT":
            current = None
        elif current is None:
            continue
        elif line.startswith(":"):
            name, policy = (line[1:].split() + ["-"])[:2]
            if name in BUILTIN_CHAINS:
                current.policies[name] = policy
            else:
                current.chains.append(name)
        elif line.startswith("-A "):
            _, chain, *rest = line.split(" ", 2)
            current.rules.append((chain, rest[0] if rest else ""))
    return tables


def _targets_ours(spec: str) -> bool:
    try:
        words = shlex.split(spec)
    except ValueError:
        words = spec.split()
    return any(a in ("-j", "-g", "--jump", "--goto") and b.startswith(CHAIN_PREFIX)
               for a, b in zip(words, words[1:]))


def sweep_text(tables: dict[str, TableState]) -> str:
    """iptables-restore --noflush input removing everything of ours found in
    `tables`: every rule elsewhere that jumps into a TNGNFQ_ chain, then every
    TNGNFQ_ chain (flushed, then deleted). Empty when there is nothing."""
    lines: list[str] = []
    for name, state in tables.items():
        ours = [c for c in state.chains if c.startswith(CHAIN_PREFIX)]
        hooks = [(c, s) for c, s in state.rules if not c.startswith(CHAIN_PREFIX) and _targets_ours(s)]
        if not ours and not hooks:
            continue
        lines.append(f"*{name}")
        lines += [f"-D {chain} {spec}" for chain, spec in hooks]
        lines += [f"-F {chain}" for chain in ours]
        lines += [f"-X {chain}" for chain in ours]
        lines.append("COMMIT")
    return "".join(f"{line}\n" for line in lines)


def ours(tables: dict[str, TableState]) -> dict[str, list[str]]:
    """Our rules, as `-A chain spec` lines per table (hooks included)."""
    found: dict[str, list[str]] = {}
    for name, state in tables.items():
        lines = [f"-A {c} {s}" for c, s in state.rules if c.startswith(CHAIN_PREFIX) or _targets_ours(s)]
        lines += [f":{c}" for c in state.chains if c.startswith(CHAIN_PREFIX)]
        if lines:
            found[name] = lines
    return found


@dataclass(frozen=True)
class Iptables:
    """One iptables backend's restore/save tools."""

    backend: str  # "nft" | "legacy"
    restore: str
    save: str

    @classmethod
    def detect(cls) -> "Iptables":
        backend = os.environ.get(BACKEND_ENV)
        if backend not in (None, "", "nft", "legacy"):
            raise IptablesError(f"{BACKEND_ENV}={backend!r}: expected nft or legacy")
        if not backend:
            iptables = shutil.which("iptables")
            if iptables is None:
                raise IptablesError("iptables is not installed (need iptables-restore/iptables-save)")
            proc = subprocess.run([iptables, "-V"], capture_output=True, text=True, timeout=10)
            backend = backend_from_version(proc.stdout + proc.stderr)
        return cls.for_backend(backend)

    @classmethod
    def for_backend(cls, backend: str) -> "Iptables":
        tools = []
        for tool in ("restore", "save"):
            exe = shutil.which(f"iptables-{backend}-{tool}") or shutil.which(f"iptables-{tool}")
            if exe is None:
                raise IptablesError(f"iptables-{backend}-{tool} is not installed")
            tools.append(exe)
        return cls(backend, *tools)

    def apply(self, text: str) -> None:
        """One iptables-restore --noflush transaction (all or nothing per table)."""
        if not text:
            return
        proc = subprocess.run([self.restore, "-w", "10", "--noflush"], input=text, capture_output=True,
                              text=True, timeout=RESTORE_TIMEOUT)
        if proc.returncode != 0:
            detail = " ".join(proc.stderr.split()) or f"exit status {proc.returncode}"
            raise IptablesError(f"{os.path.basename(self.restore)} failed: {detail}")

    def dump(self) -> str:
        proc = subprocess.run([self.save], capture_output=True, text=True, timeout=RESTORE_TIMEOUT)
        if proc.returncode != 0:
            raise IptablesError(f"{os.path.basename(self.save)} failed: {' '.join(proc.stderr.split())}")
        return proc.stdout

    def state(self) -> dict[str, TableState]:
        return parse_save(self.dump())

    def drop_tables_if_pristine(self, names: list[str]) -> list[str]:
        """nft backend only: delete tables (that we caused to exist) when nothing
        is left in them, so the namespace looks exactly as before. Legacy
        tables cannot be unloaded; they stay, empty."""
        nft = shutil.which("nft")
        if self.backend != "nft" or nft is None or not names:
            return []
        state = self.state()
        dropped = []
        for name in names:
            if name in state and state[name].pristine:
                proc = subprocess.run([nft, "delete", "table", "ip", name], capture_output=True, text=True,
                                      timeout=RESTORE_TIMEOUT)
                if proc.returncode == 0:
                    dropped.append(name)
        return dropped

    def sweep(self) -> str:
        """Remove every rule and chain of ours, then the tables we made if they
        are empty now; returns what was run (empty: nothing found)."""
        state = self.state()
        text = sweep_text(state)
        self.apply(text)
        self.drop_tables_if_pristine([t for t, st in state.items() if TABLE_MARKER in st.chains])
        return text


def marker_text(tables: list[str]) -> str:
    """Declares TABLE_MARKER in each of `tables` (which creates them)."""
    return "".join(f"*{t}\n:{TABLE_MARKER} - [0:0]\nCOMMIT\n" for t in tables)
