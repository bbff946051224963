"""Render lock diffs: GitHub-flavoured markdown for PR bodies, JSON for other bots.

Input: the :class:`~envmgr.report.diff.ProfileDiff` list of one comparison. Output: text. Per
profile, the torch/CUDA/cuDNN/NCCL/triton changes come first (one table), then the GPU
architectures and driver, then every package change (folded in ``<details>`` when long).
Pure functions; the same diffs give the same text.

The markdown stays under ``max_chars`` (default 65,000: GitHub rejects a pull-request body
over 65,536 characters). A body that fits is left alone, byte for byte. One that does not
keeps the summary lines and every profile's key table, and loses, in this order until it
fits: the folded package lists (largest first); the other details of each profile (largest
first); whole sections (largest first; their summary lines stay); at last, the tail. A note
under the summary says what was left out and how to see it all.
"""

from __future__ import annotations

import json
import shlex

from ..model.gpucompat import version_tuple
from .diff import ArchChange, ProfileDiff, describe_arch

JSON_FORMAT = 1
FOLD_AT = 8  # package tables longer than this are folded in <details>
TITLE = "envmgr lock changes"
DEFAULT_MAX_CHARS = 65_000  # GitHub rejects a pull-request body over 65,536 characters
MIN_MAX_CHARS = 2_000  # below this not even the summary and the note fit

# How much of a profile's section is shown (see markdown()).
FULL, NO_PACKAGES, KEY_ONLY, DROPPED = 0, 1, 2, 3


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
            rows.append(f"| {label} | {_cell(f.old)} | {_cell(f.new + _inferred(d, name))} | "
                        f"{'raised' if version_tuple(f.new) > version_tuple(f.old) else 'lowered'} |")
    if d.arch:
        rows.append(
            f"| GPU archs | {_cell(_arch_text(d.arch.old, d.arch.old_ptx))} | "
            f"{_cell(_arch_text(d.arch.new, d.arch.new_ptx) + _inferred(d, 'arch-list'))} | "
            f"{_cell(_arch_delta(d.arch))} |"
        )
    if d.status == "changed" or d.old_size != d.new_size:
        rows.append(f"| download | {human_size(d.old_size)} | {human_size(d.new_size)} | {size_delta(d.old_size, d.new_size)} |")
    if not rows:
        return []
    return ["| | before | after | change |", "|---|---|---|---|", *rows, ""]


def _inferred(d: ProfileDiff, fact: str) -> str:
    return " (inferred)" if fact in d.inferred else ""


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
    if version_tuple(f.new) > version_tuple(f.old):
        return [f"**Minimum driver raised** from {f.old} to {f.new}: hosts with an older NVIDIA driver fail with \"driver too old\".", ""]
    return [f"Minimum driver lowered from {f.old} to {f.new}.", ""]


def _full_command(name: str, base: str) -> str:
    args = f" {shlex.quote(name)}" if name else ""
    if base != "HEAD":
        args += f" --base {shlex.quote(base)}"
    return f"envmgr diff{args} --max-chars 0"


def _package_summary(d: ProfileDiff) -> str:
    return f"{len(d.packages)} package change{'s' if len(d.packages) != 1 else ''}: {_summary_counts(d)}"


def _folds(d: ProfileDiff) -> bool:
    return len(d.packages) > FOLD_AT


def _package_table(d: ProfileDiff, cut: bool = False, base: str = "HEAD") -> list[str]:
    if not d.packages:
        return []
    summary = _package_summary(d)
    if cut and _folds(d):
        return [f"**Packages** ({summary}): list left out to fit the size limit; "
                f"`{_full_command(d.profile, base)}` shows it.", ""]
    rows = [
        f"| {p.name} | {_cell(p.old or '')} | {_cell(p.new or '')} | "
        f"{_cell(_change_text(p.kind, p.level, p.old_label, p.new_label))} |"
        for p in d.packages
    ]
    table = ["| package | before | after | change |", "|---|---|---|---|", *rows]
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
    if d.inferred and lines:
        lines.append("- inferred, not read from a primary source: " + ", ".join(d.inferred))
    out = (["**Profile**", *lines, ""]) if lines else []
    if d.inferred and not lines:
        out = [f"Inferred, not read from a primary source: {', '.join(d.inferred)} "
               "(`envmgr lock --verify` reads the arch list from the torch binary).", ""]
    return out


def profile_markdown(d: ProfileDiff, level: int = FULL, base: str = "HEAD") -> str:
    """One profile's section. ``level``: FULL; NO_PACKAGES (a folded package list becomes
    one line); KEY_ONLY (title and key table, then one line naming what was left out);
    DROPPED (nothing)."""
    if level >= DROPPED:
        return ""
    lines = [_title(d), ""]
    if d.status == "removed":
        lines += [f"The lock is gone: {d.old_count} packages, {human_size(d.old_size)} (torch {d.old_torch or 'none'}).", ""]
        return "\n".join(lines)
    if d.status == "added":
        lines += [f"{d.new_count} packages, {human_size(d.new_size)} to download.", ""]
    lines += _key_table(d)
    rest = (_arch_lines(d.arch) if d.arch else []) + _driver_lines(d) + _other_lines(d)
    if level >= KEY_ONLY and (rest or d.packages):
        what = [w for w, shown in (("GPU architectures", d.arch), ("driver", _driver_lines(d)),
                                   ("profile", _other_lines(d))) if shown]
        if d.packages:
            what.append(f"packages ({_package_summary(d)})")
        lines += [f"Details left out to fit the size limit: {', '.join(what)}; "
                  f"`{_full_command(d.profile, base)}` shows them.", ""]
        return "\n".join(lines)
    lines += rest
    lines += _package_table(d, cut=level >= NO_PACKAGES, base=base)
    return "\n".join(lines)


def markdown(diffs: list[ProfileDiff], base: str = "HEAD", max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """A PR body: a summary line, then one section per changed profile; at most ``max_chars``
    characters (0: no limit), shortened as the module docstring says."""
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
    levels = [FULL] * len(changed)
    text = _compose(head, changed, levels, base, max_chars)
    if not max_chars or len(text) <= max_chars:
        return text
    sections: dict[tuple[int, int], str] = {}

    def section(i: int, level: int) -> str:
        if (i, level) not in sections:
            sections[i, level] = profile_markdown(changed[i], level, base)
        return sections[i, level]

    for level in (NO_PACKAGES, KEY_ONLY, DROPPED):
        # largest saving first; ties in the order of the profiles
        order = sorted(
            (i for i in range(len(changed)) if section(i, level) != section(i, levels[i])),
            key=lambda i: (len(section(i, level)) - len(section(i, levels[i])), i),
        )
        for i in order:
            levels[i] = level
            text = _compose(head, changed, levels, base, max_chars, section)
            if len(text) <= max_chars:
                return text
    # Even the summary lines do not fit: cut at a line, and say so.
    tail = f"\n… cut to fit {max_chars:,} characters; `envmgr diff --format json` has everything.\n"
    keep = text[: max_chars - len(tail)]
    return keep[: keep.rfind("\n") + 1 if "\n" in keep else 0].rstrip("\n") + tail


def _compose(head: list[str], changed: list[ProfileDiff], levels: list[int], base: str, max_chars: int,
             section=None) -> str:
    section = section or (lambda i, level: profile_markdown(changed[i], level, base))
    notice = _notice(changed, levels, base, max_chars)
    top = head + ([notice, ""] if notice else [])
    body = "\n".join(s for i in range(len(changed)) if (s := section(i, levels[i])))
    return "\n".join(top) + "\n" + body.rstrip("\n") + "\n"


def _notice(changed: list[ProfileDiff], levels: list[int], base: str, max_chars: int) -> str:
    """What was left out and how to see it; "" when nothing was."""
    if not any(levels):
        return ""
    names = lambda level: ", ".join(f"`{d.profile}`" for d, lv in zip(changed, levels) if lv == level)  # noqa: E731
    parts = []
    if NO_PACKAGES in levels:
        parts.append(f"the package lists of {names(NO_PACKAGES)}")
    if KEY_ONLY in levels:
        parts.append(f"everything but the key table of {names(KEY_ONLY)}")
    if DROPPED in levels:
        parts.append(f"the sections of {names(DROPPED)} (their summary lines are above)")
    json_cmd = "envmgr diff" + (f" --base {shlex.quote(base)}" if base != "HEAD" else "") + " --format json"
    return (
        f"> **Shortened to fit {max_chars:,} characters** (`--max-chars`; GitHub rejects a pull-request body "
        f"over 65,536): "
        f"left out {'; '.join(parts)}. See it all with `{json_cmd}`, or one profile in full with "
        f"`{_full_command('NAME', base)}`."
    )


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
        from ..core.errors import UserError

        raise UserError(f"unknown diff format {fmt!r}", hint="use markdown or json")


def parse_max_chars(value: str | int) -> int:
    """``--max-chars``: 0 (no limit) or at least MIN_MAX_CHARS; anything else is a UserError."""
    from ..core.errors import UserError

    try:
        n = int(str(value).strip().replace("_", ""))
    except ValueError:
        n = -1
    if n != 0 and n < MIN_MAX_CHARS:
        raise UserError(f"bad --max-chars {str(value)!r}", hint=f"use 0 (no limit) or a number of at least {MIN_MAX_CHARS}")
    return n


def render(diffs: list[ProfileDiff], fmt: str, base: str = "HEAD", max_chars: int = DEFAULT_MAX_CHARS) -> str:
    check_format(fmt)
    return json_text(diffs, base) if fmt == "json" else markdown(diffs, base, max_chars)


def to_json(diffs: list[ProfileDiff], base: str = "HEAD") -> dict:
    return {
        "format": JSON_FORMAT,
        "base": base,
        "changed": any(d.changed for d in diffs),
        "profiles": [d.to_json() for d in diffs],
    }


def json_text(diffs: list[ProfileDiff], base: str = "HEAD") -> str:
    return json.dumps(to_json(diffs, base), indent=2, sort_keys=True) + "\n"
