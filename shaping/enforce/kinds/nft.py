"""The tenant's nftables table (DSCP marks, fwmarks for paths, skb priority for HTB, numgen drops)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from shaping.enforce.kinds.base import NetlinkContext
from shaping.enforce.nftcli import NftNotFound
from shaping.enforce.nft_rules import CHAINS, FAMILY, ChainSpec, RuleSpec, desired_rules, parse_comment
from shaping.enforce.ops import KernelState, NftRuleState, Operation
from shaping.enforce.target import EnforceTarget
from shaping.spec.plan import ShapingPlan
from shaping.spec.tenant import TenantSpec


@dataclass(frozen=True)
class NftTable(Operation):
    """Create or delete (with everything in it) the tenant's table."""

    kind: ClassVar[str] = "nft"
    table: str


@dataclass(frozen=True)
class NftChain(Operation):
    """Add a chain, or flush one (verb change: its rules are re-added after)."""

    kind: ClassVar[str] = "nft"
    table: str
    chain: ChainSpec


@dataclass(frozen=True)
class NftRule(Operation):
    """Append a rule (add), insert one before the rule with ``handle`` (insert), replace one by handle (same
    position, new handle) or delete one by handle."""

    kind: ClassVar[str] = "nft"
    table: str
    rule: RuleSpec
    handle: int | None = None


def _chain_ops(table: str, chain: ChainSpec, want: list[RuleSpec], have: list[NftRuleState]) -> list[Operation]:
    """Only the rules that differ, by handle: deletes of rules no longer wanted, in-place replacements of
    changed ones, new rules inserted before the next rule that stays (appended when none follows).

    A drop probability turning on or off adds or removes one rule this way instead of rebuilding the
    chain (a flush and refill cost a 10 Hz loop 200 ms a step). The chain is rebuilt only when the
    rules that stay would change order, or it holds a rule that is not ours or a key twice.
    """
    keys = [h.key for h in have]
    wanted = {w.key for w in want}
    kept = {h.key: h for h in have if h.key in wanted}
    if "" in keys or len(set(keys)) != len(keys) or [k for k in keys if k in wanted] != [
        w.key for w in want if w.key in kept
    ]:
        flush: list[Operation] = [NftChain("change", table, chain)] if have else []
        return flush + [NftRule("add", table, w) for w in want]
    # Deletes first: they name handles only, so they cannot disturb the positions used below.
    ops: list[Operation] = [
        NftRule("delete", table, RuleSpec(chain.name, h.key, ()), h.handle) for h in have if h.key not in wanted
    ]
    for i, w in enumerate(want):
        h = kept.get(w.key)
        if h is None:
            # Before the next rule that stays (its original handle: a replacement of it comes later in the
            # same transaction and is inserted before that handle too, so the order holds).
            following = next((kept[x.key] for x in want[i + 1 :] if x.key in kept), None)
            ops.append(NftRule("insert", table, w, following.handle) if following else NftRule("add", table, w))
        elif h.sig != w.sig:
            ops.append(NftRule("replace", table, w, h.handle))
    return ops


class NftKind:
    """Plans, records, applies (one atomic nft transaction per apply) and reads the nftables part."""

    name = "nft"

    def plan(self, spec: TenantSpec, plan: ShapingPlan, target: EnforceTarget, current: KernelState) -> list[Operation]:
        """Table and chains when missing, then per chain in-place replacements or a rebuild."""
        table = target.nft_table
        wanted = desired_rules(spec, plan, target)
        ops: list[Operation] = []
        if not current.nft_table:
            ops.append(NftTable("add", table))
        for chain in CHAINS:
            if not current.nft_table or chain.name not in current.nft_chains:
                ops.append(NftChain("add", table, chain))
            have = [r for r in current.nft_rules if r.chain == chain.name] if current.nft_table else []
            ops.extend(_chain_ops(table, chain, wanted[chain.name], have))
        return ops

    def teardown(self, target: EnforceTarget, current: KernelState) -> list[Operation]:
        """Deleting the table deletes its chains and rules."""
        return [NftTable("delete", target.nft_table)] if current.nft_table else []

    def record(self, state: KernelState, op: Operation, handle: int | None = None) -> None:
        """Model nft's reaction; a new rule gets ``handle`` (the kernel's, echoed by nft) or one past the largest."""
        if isinstance(op, NftTable):
            state.nft_table = op.verb == "add"
            state.nft_chains.clear()
            state.nft_rules.clear()
        elif isinstance(op, NftChain):
            state.nft_chains.add(op.chain.name)
            if op.verb == "change":
                state.nft_rules[:] = [r for r in state.nft_rules if r.chain != op.chain.name]
        elif isinstance(op, NftRule):
            rs = state.nft_rules
            if op.verb in ("add", "insert"):
                if handle is None:
                    handle = 1 + max((r.handle for r in rs), default=len(state.nft_chains))
                new = NftRuleState(op.rule.chain, op.rule.key, op.rule.sig, handle)
                if op.verb == "add":
                    rs.append(new)
                else:
                    rs.insert(next(i for i, r in enumerate(rs) if r.handle == op.handle), new)
            else:
                pos = next(i for i, r in enumerate(rs) if r.handle == op.handle)
                if op.verb == "delete":
                    del rs[pos]
                else:  # replaced by insert + delete: a new handle, the same position
                    if handle is None:
                        handle = 1 + max(r.handle for r in rs)
                    rs[pos] = NftRuleState(op.rule.chain, op.rule.key, op.rule.sig, handle)

    def apply(self, ctx: NetlinkContext, ops: Sequence[Operation]) -> None:
        """All nft operations of one apply go in one JSON document: nft commits it as one transaction."""
        cmds = [cmd for op in ops for cmd in nft_commands(op)]
        ctx.nft_rule_handles = []
        if cmds:
            ctx.nft_rule_handles = echoed_rule_handles(ctx.nft({"nftables": cmds}))

    def read(self, ctx: NetlinkContext, state: KernelState) -> None:
        """Chains and our rules (by comment), in chain order, from ``nft -j list table``."""
        doc = {"nftables": [{"list": {"table": {"family": FAMILY, "name": ctx.target.nft_table}}}]}
        try:
            out = ctx.nft(doc)
        except (NftNotFound, FileNotFoundError):  # no table of ours, or no nft binary at all
            return
        state.nft_table = True
        for item in out.get("nftables", []):
            if "chain" in item:
                state.nft_chains.add(item["chain"]["name"])
            elif "rule" in item:
                rule = item["rule"]
                parsed = parse_comment(rule.get("comment"))
                # A rule without our comment was added by someone else: a key of "" forces a rebuild.
                key, sig = parsed if parsed else ("", "")
                state.nft_rules.append(NftRuleState(rule["chain"], key, sig, int(rule["handle"])))


def echoed_rule_handles(out: dict[str, Any]) -> list[int]:
    """The handles of the rules an nft transaction added or inserted, in command order, from its ``-e -a`` echo."""
    return [int(cmd[verb]["rule"]["handle"]) for cmd in out.get("nftables", []) for verb in ("add", "insert")
            if isinstance(cmd.get(verb), dict) and "handle" in cmd[verb].get("rule", {})]  # fmt: skip


def nft_commands(op: Operation) -> list[dict[str, Any]]:
    """The commands of nft's JSON schema one operation becomes (one apply sends them all as one transaction)."""
    if isinstance(op, NftTable):
        return [{op.verb: {"table": {"family": FAMILY, "name": op.table}}}]
    if isinstance(op, NftChain):
        if op.verb == "change":
            return [{"flush": {"chain": {"family": FAMILY, "table": op.table, "name": op.chain.name}}}]
        return [{"add": {"chain": op.chain.json(op.table)}}]
    if isinstance(op, NftRule):
        ref = {"family": FAMILY, "table": op.table, "chain": op.rule.chain, "handle": op.handle}
        if op.verb == "delete":
            return [{"delete": {"rule": ref}}]
        if op.verb == "insert":  # before the rule with op.handle
            return [{"insert": {"rule": op.rule.json(op.table, op.handle)}}]
        if op.verb == "replace":
            # nft 1.0.6 aborts on `replace rule` with an anonymous interval set (evaluate.c:1589
            # interval_set_eval: "BUG: unhandled op 2"); insert-before plus delete in the same
            # transaction has the same effect, atomically.
            return [{"insert": {"rule": op.rule.json(op.table, op.handle)}}, {"delete": {"rule": ref}}]
        return [{"add": {"rule": op.rule.json(op.table)}}]
    raise TypeError(f"not an nftables operation: {op.describe()}")


KIND = NftKind()
