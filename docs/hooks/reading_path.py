r"""
# The reading path

The site teaches in one order: the package overview, the config, the model, its cache, the checkpoint, ... That
order is written once, as `extra: reading_path:` in `mkdocs.yml`, a mapping of parts to lists of source files (or
pages of `docs/`), one line each, optionally with what the page teaches:

```yaml
extra:
  reading_path:
    The core path:                      # a part: a list of pages
      - labml_nn/neox/config.py: the model's numbers in one small dataclass
      - labml_nn/neox/model.py
    Engineering notes:                  # a group of parts: a mapping of parts to lists
      Checkpoints in detail:
        - labml_nn/neox/checkpoint/atomic.py
```

A top-level key is either a part (a list of pages) or a group of parts (a mapping), so the site can have two
depths: a core path read end to end, then notes grouped by subject. From it come the navigation (groups and
parts are its sections, each page labelled with its own title), every page's Next/Previous (mkdocs follows the
navigation; the footer names the group of the page it points to) and the map on the home page. Because pages are added and removed
by several people at once, the list is checked against the files: a module that is not on the path, or a line
that names no file, is a warning, which fails `mkdocs build --strict`, and the message names the line to add or
remove. Nothing here knows about mkdocs except through the arguments it is given.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Stop:
    part: str             # the section of the navigation, "The model"
    path: str             # `labml_nn/neox/model.py`, or a page of docs/ such as `evaluation.md`
    teaches: str | None   # one line for the home page's map
    group: str = ""       # the top-level key: the part itself, or the group the part belongs to


def read(extra: dict | None) -> tuple[list[Stop], list[str]]:
    """The stops of `extra.reading_path`, in order, and the problems found in the list itself."""
    raw = (extra or {}).get("reading_path")
    problems: list[str] = []
    if not isinstance(raw, dict):
        return [], ["mkdocs.yml has no `extra: reading_path:` (a mapping of parts to lists of source files); "
                    "without it the navigation is the source tree in alphabetical order"]
    stops: list[Stop] = []
    parts: list[tuple[str, str, object]] = []   # (group, part, entries)
    for key, value in raw.items():
        if isinstance(value, dict):
            parts += [(str(key), str(part), entries) for part, entries in value.items()]
        else:
            parts.append((str(key), str(key), value))
    for group, part, entries in parts:
        if not isinstance(entries, (list, type(None))):
            problems.append(f"mkdocs.yml, extra: reading_path, part {part!r}: not a list of `- path` lines")
            continue
        for entry in entries or []:
            if isinstance(entry, str):
                path, teaches = entry, None
            elif isinstance(entry, dict) and len(entry) == 1:
                path, teaches = next(iter(entry.items()))
            else:
                problems.append(f"mkdocs.yml, extra: reading_path, part {part!r}: {entry!r} is neither "
                                "`- path` nor `- path: what it teaches`")
                continue
            stops.append(Stop(part, str(path).strip(), str(teaches).strip() if teaches else None, group))
    seen: set[str] = set()
    for stop in stops:
        if stop.path in seen:
            problems.append(f"mkdocs.yml, extra: reading_path: `{stop.path}` is listed twice; remove the line "
                            f"`- {stop.path}` from part {stop.part!r} or from its other part")
        seen.add(stop.path)
    return stops, problems


def check(stops: list[Stop], existing: list[str]) -> list[str]:
    """
    Compare the path with the files that exist (`existing`: source paths and docs pages, in discovery order).
    One message per line to add or remove, so that a merge that adds a module, or removes one, cannot drop or
    leave a page silently.
    """
    listed = {s.path for s in stops}
    have = set(existing)
    problems = []
    for stop in stops:
        if stop.path not in have:
            problems.append(f"mkdocs.yml, extra: reading_path, part {stop.part!r}: `{stop.path}` does not exist; "
                            f"remove the line `- {stop.path}{': ' + stop.teaches if stop.teaches else ''}`")
    for path in existing:
        if path not in listed:
            neighbour = _neighbour(path, [s for s in stops if s.path in have])
            where = f"in part {neighbour.part!r}, after the line `- {neighbour.path}`" if neighbour else "in a part"
            problems.append(f"{path} exists but is not on the reading path: add the line "
                            f"`- {path}: <what the page teaches>` to `extra: reading_path:` in mkdocs.yml, {where}")
    return problems


def _neighbour(path: str, stops: list[Stop]) -> Stop | None:
    """The listed (existing) file of the same folder that comes last: a suggestion of where a new one goes."""
    folder = path.rsplit("/", 1)[0] if "/" in path else ""
    same = [s for s in stops if (s.path.rsplit("/", 1)[0] if "/" in s.path else "") == folder]
    return same[-1] if same else None


def ordered(stops: list[Stop], existing: list[str]) -> list[Stop]:
    """The stops that exist, in the path's order, then (in a non-strict build) the files the path forgot."""
    have = set(existing)
    result = [s for s in stops if s.path in have]
    listed = {s.path for s in stops}
    result += [Stop("Not on the reading path", p, None) for p in existing if p not in listed]
    return result


def nav(stops: list[Stop], page_of: dict[str, str], title_of: dict[str, str]) -> list:
    """
    mkdocs `nav` entries, one section per part, `[{part: [{title: page}, ...]}, ...]`, and a group's parts as
    sections inside the group's: `{group: [{part: [...]}, ...]}`.
    """
    groups: dict[str, dict[str, list]] = {}
    for stop in stops:
        page = page_of.get(stop.path, stop.path)
        groups.setdefault(stop.group or stop.part, {}).setdefault(stop.part, []).append(
            {title_of.get(stop.path, stop.path): page})
    return [{group: parts[group]} if list(parts) == [group] else {group: [{p: pages} for p, pages in parts.items()]}
            for group, parts in groups.items()]


def home_map(stops: list[Stop], page_of: dict[str, str], title_of: dict[str, str],
             first_sentence_of: dict[str, str]) -> str:
    """The home page's map: each part a heading, each stop its title (linked), its file and what it teaches."""
    lines = []
    for i, stop in enumerate(stops):
        group = stop.group or stop.part
        if i == 0 or (stops[i - 1].group or stops[i - 1].part) != group:
            lines += ["", f"### {group}", ""]
        if stop.part != group and (i == 0 or stops[i - 1].part != stop.part):
            lines += ["", f"#### {stop.part}", ""]
        page = page_of.get(stop.path, stop.path)
        title = title_of.get(stop.path, stop.path)
        teaches = stop.teaches or first_sentence_of.get(stop.path, "")
        where = f" (`{stop.path}`)" if stop.path.endswith(".py") else ""
        lines.append(f"{i + 1}. [{title}]({page}){where}" + (f": {teaches}." if teaches else ""))
    return "\n".join(lines).replace("..\n", ".\n").strip() + "\n"
