r"""
# The reading path

The site teaches in one order: the package overview, the config, the model, its cache, the checkpoint, ... That
order is written once, as `extra: reading_path:` in `mkdocs.yml`, a mapping of parts to lists of source files (or
pages of `docs/`), one line each, optionally with what the page teaches:

```yaml
extra:
  reading_path:
    The model:
      - labml_nn/neox/config.py: the model's numbers in one small dataclass
      - labml_nn/neox/model.py
```

From it come the navigation (the parts are its sections, each page labelled with its own title), every page's
Next/Previous (mkdocs follows the navigation) and the map on the home page. Because pages are added and removed
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


def read(extra: dict | None) -> tuple[list[Stop], list[str]]:
    """The stops of `extra.reading_path`, in order, and the problems found in the list itself."""
    raw = (extra or {}).get("reading_path")
    problems: list[str] = []
    if not isinstance(raw, dict):
        return [], ["mkdocs.yml has no `extra: reading_path:` (a mapping of parts to lists of source files); "
                    "without it the navigation is the source tree in alphabetical order"]
    stops: list[Stop] = []
    for part, entries in raw.items():
        for entry in entries or []:
            if isinstance(entry, str):
                path, teaches = entry, None
            elif isinstance(entry, dict) and len(entry) == 1:
                path, teaches = next(iter(entry.items()))
            else:
                problems.append(f"mkdocs.yml, extra: reading_path, part {part!r}: {entry!r} is neither "
                                "`- path` nor `- path: what it teaches`")
                continue
            stops.append(Stop(str(part), str(path).strip(), str(teaches).strip() if teaches else None))
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
    """mkdocs `nav` entries, one section per part: `[{part: [{title: page}, ...]}, ...]`."""
    parts: dict[str, list] = {}
    for stop in stops:
        page = page_of.get(stop.path, stop.path)
        parts.setdefault(stop.part, []).append({title_of.get(stop.path, stop.path): page})
    return [{part: pages} for part, pages in parts.items()]


def home_map(stops: list[Stop], page_of: dict[str, str], title_of: dict[str, str],
             first_sentence_of: dict[str, str]) -> str:
    """The home page's map: each part a heading, each stop its title (linked), its file and what it teaches."""
    lines = []
    for i, stop in enumerate(stops):
        if i == 0 or stops[i - 1].part != stop.part:
            lines += ["", f"### {stop.part}", ""]
        page = page_of.get(stop.path, stop.path)
        title = title_of.get(stop.path, stop.path)
        teaches = stop.teaches or first_sentence_of.get(stop.path, "")
        where = f" (`{stop.path}`)" if stop.path.endswith(".py") else ""
        lines.append(f"{i + 1}. [{title}]({page}){where}" + (f": {teaches}." if teaches else ""))
    return "\n".join(lines).replace("..\n", ".\n").strip() + "\n"
