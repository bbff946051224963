"""Render lock diffs: GitHub-flavoured markdown for PR bodies, JSON for other bots.

Input: the :class:`~envmgr.diff.ProfileDiff` list of one comparison. Output: text. Per
profile, the torch/CUDA/cuDNN/NCCL/triton changes come first (one table), then the GPU
architectures and driver, then every package change (folded in ``<details>`` when long).
Pure functions; the same diffs give the same text.
"""

from __future__ import annotations

import json

from .diff import ArchChange, ProfileDiff, describe_arch

JSON_FORMAT = 1
FOLD_AT = 8  # package tables longer than this are folded in <details>
TITLE = "envmgr lock changes"


def human_size(n: int) -> str:
    value = float(abs(n))
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            text = f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
            return ("-" if n < 0 else "") + text
        value /= 1024
    return str(n)  # pragma: no cover


def size_delta(old: int, new: int) -> str:
    delta = new - old
    if delta == 0:
        return "no change"
    sign = "+" if delta > 0 else "-"
    text = f"{sign}{human_size(abs(delta))}"
    if old:
        text += f" ({sign}{abs(delta) / old * 100:.1f}%)"
    return text


def _cell(text: str) -> str:
    return (text or "—").replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return f"`{text}`" if text else "—"


def _change_text(kind: str, level: str, old_label: str = "", new_label: str = "") -> str:
    text = kind
    if level and level != "local":
        text += f" ({level})"
    if old_label or new_label:
        text += f", local label `+{old_label or '(none)'}` → `+{new_label or '(none)'}`".replace("`+(none)`", "(none)")
    return text


def _title(d: ProfileDiff) -> str:
    if d.status == "added":
        torch = f": torch {d.new_torch}" if d.new_torch else ""
        return f"### `{d.profile}` (new lock){torch}"
    if d.status == "removed":
        return f"### `{d.profile}` (lock removed)"
    if d.old_torch != d.new_torch:
        return f"### `{d.profile}`: torch {d.old_torch or '(none)'} → {d.new_torch or '(none)'}"
    counts = d.counts()
    n = sum(counts.values())
    return f"### `{d.profile}`: {n} package change{'s' if n != 1 else ''}" if n else f"### `{d.profile}`"


def _summary_counts(d: ProfileDiff) -> str:
    order = ("upgraded", "downgraded", "added", "removed", "relabelled", "rebuilt", "moved")
    counts = d.counts()
    return ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k))


def _arch_text(archs: tuple[str, ...], ptx: str) -> str:
    if not archs and not ptx:
        return "none (no CUDA)"
    return " ".join(archs) + (f" +PTX {ptx}" if ptx else "")


def _key_table(d: ProfileDiff) -> list[str]:
    rows = [
        f"| **{k.component}** | {_cell(k.old)} | {_cell(k.new)} | {_cell(_change_text(k.kind, k.level, k.old_label, k.new_label))} |"
        for k in d.key
    ]
    for name, label in (("min-driver", "minimum driver"), ("toolkit-driver", "driver for PTX JIT")):
        f = d.fact(name)
        if f:
            rows.append(f"| {label} | {_cell(f.old)} | {_cell(f.new)} | {'raised' if _driver_key(f.new) > _driver_key(f.old) else 'lowered'} |")
    if d.arch:
        rows.append(
            f"| GPU archs | {_cell(_arch_text(d.arch.old, d.arch.old_ptx))} | {_cell(_arch_text(d.arch.new, d.arch.new_ptx))} | "
            f"{_cell(_arch_delta(d.arch))} |"
        )
    if d.status == "changed" or d.old_size != d.new_size:
        rows.append(f"| download | {human_size(d.old_size)} | {human_size(d.new_size)} | {size_delta(d.old_size, d.new_size)} |")
    if not rows:
        return []
    return ["| | before | after | change |", "|---|---|---|---|", *rows, ""]


def _driver_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.replace("-", ".").split(".") if p.isdigit())


def _arch_delta(a: ArchChange) -> str:
    parts = [f"+{x}" for x in a.added] + [f"-{x}" for x in a.removed]
    if a.old_ptx != a.new_ptx:
        parts.append(f"PTX {a.old_ptx or 'none'} → {a.new_ptx or 'none'}")
    return ", ".join(parts)


def _arch_lines(a: ArchChange) -> list[str]:
    lines = ["**GPU architectures**"]
    for arch in a.removed:
        lines.append(f"- {describe_arch(arch)} dropped")
    for arch in a.added:
        lines.append(f"- {describe_arch(arch)} added")
    if a.old_ptx != a.new_ptx:
        if a.new_ptx and a.old_ptx:
            lines.append(f"- PTX moved from {a.old_ptx} to {a.new_ptx}: newer GPUs run it by JIT")
        elif a.new_ptx:
            lines.append(f"- PTX for {a.new_ptx} added: GPUs newer than {a.new_ptx} run it by JIT")
        else:
            lines.append(f"- PTX for {a.old_ptx} dropped: GPUs newer than the list no longer run it by JIT")
    if a.gpus_lost:
        lines.append(f"- **Stop being supported**: {'; '.join(a.gpus_lost)}")
    if a.gpus_gained:
        lines.append(f"- Start being supported: {'; '.join(a.gpus_gained)}")
    return [*lines, ""]


def _driver_lines(d: ProfileDiff) -> list[str]:
    f = d.fact("min-driver")
    if not f or not f.old or not f.new:
        return []
    if _driver_key(f.new) > _driver_key(f.old):
        return [f"**Minimum driver raised** from {f.old} to {f.new}: hosts with an older NVIDIA driver fail with \"driver too old\".", ""]
    return [f"Minimum driver lowered from {f.old} to {f.new}.", ""]


def _package_table(d: ProfileDiff) -> list[str]:
    if not d.packages:
        return []
    rows = [
        f"| {p.name} | {_cell(p.old or '')} | {_cell(p.new or '')} | "
        f"{_cell(_change_text(p.kind, p.level, p.old_label, p.new_label))} |"
        for p in d.packages
    ]
    table = ["| package | before | after | change |", "|---|---|---|---|", *rows]
    summary = f"{len(d.packages)} package change{'s' if len(d.packages) != 1 else ''}: {_summary_counts(d)}"
    if len(rows) > FOLD_AT:
        return [f"<details><summary>{summary}</summary>", "", *table, "", "</details>", ""]
    return [f"**Packages** ({summary})", "", *table, ""]


def _other_lines(d: ProfileDiff) -> list[str]:
    lines = []
    for f in d.facts:
        if f.name in ("min-driver", "toolkit-driver", "cuda"):
            continue  # shown above
        lines.append(f"- {f.name}: {_code(f.old)} → {_code(f.new)}")
    if d.inputs:
        lines.append("- inputs changed: " + "; ".join(f"`{i}`" for i in d.inputs))
    return (["**Profile**", *lines, ""]) if lines else []


def profile_markdown(d: ProfileDiff) -> str:
    lines = [_title(d), ""]
    if d.status == "removed":
        lines += [f"The lock is gone: {d.old_count} packages, {human_size(d.old_size)} (torch {d.old_torch or 'none'}).", ""]
        return "\n".join(lines)
    if d.status == "added":
        lines += [f"{d.new_count} packages, {human_size(d.new_size)} to download.", ""]
    lines += _key_table(d)
    if d.arch:
        lines += _arch_lines(d.arch)
    lines += _driver_lines(d)
    lines += _other_lines(d)
    lines += _package_table(d)
    return "\n".join(lines)


def markdown(diffs: list[ProfileDiff], base: str = "HEAD") -> str:
    """A PR body: a summary line, then one section per changed profile."""
    changed = [d for d in diffs if d.changed]
    same = [d.profile for d in diffs if not d.changed]
    n = len(diffs)
    if not changed:
        return f"## {TITLE}\n\nNo lock changes compared with `{base}` ({n} profile{'s' if n != 1 else ''} checked).\n"
    head = [f"## {TITLE}", ""]
    summary = f"Compared with `{base}`: {len(changed)} profile{'s' if len(changed) != 1 else ''} changed ("
    summary += ", ".join(f"`{d.profile}`" for d in changed) + ")"
    if same:
        summary += f", {len(same)} unchanged (" + ", ".join(f"`{s}`" for s in same) + ")"
    head += [summary + ".", ""]
    for d in changed:
        head.append(f"- `{d.profile}`: {_headline(d)}")
    head.append("")
    body = "\n".join(profile_markdown(d) for d in changed)
    return "\n".join(head) + "\n" + body.rstrip("\n") + "\n"


def _headline(d: ProfileDiff) -> str:
    if d.status == "added":
        return "new lock"
    if d.status == "removed":
        return "lock removed"
    parts = [f"{k.component} {k.old or '(none)'} → {k.new or '(none)'}" for k in d.key]
    variant = d.fact("variant")
    if variant:
        parts.append(f"variant {variant.old} → {variant.new}")
    if d.arch and (d.arch.added or d.arch.removed or d.arch.old_ptx != d.arch.new_ptx):
        parts.append(f"GPU archs {_arch_delta(d.arch)}")
    f = d.fact("min-driver")
    if f:
        parts.append(f"min driver {f.old or '(none)'} → {f.new or '(none)'}")
    counts = _summary_counts(d)
    if counts:
        parts.append(counts)
    if not parts and d.inputs:
        parts.append("inputs changed, same packages")
    return "; ".join(parts) or "metadata changed"


FORMATS = ("markdown", "json")


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        from .errors import UserError

        raise UserError(f"unknown diff format {fmt!r}", hint="use markdown or json")


def render(diffs: list[ProfileDiff], fmt: str, base: str = "HEAD") -> str:
    check_format(fmt)
    return json_text(diffs, base) if fmt == "json" else markdown(diffs, base)


def to_json(diffs: list[ProfileDiff], base: str = "HEAD") -> dict:
    return {
        "format": JSON_FORMAT,
        "base": base,
        "changed": any(d.changed for d in diffs),
        "profiles": [d.to_json() for d in diffs],
    }


def json_text(diffs: list[ProfileDiff], base: str = "HEAD") -> str:
    return json.dumps(to_json(diffs, base), indent=2, sort_keys=True) + "\n"
