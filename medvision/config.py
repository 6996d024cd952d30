"""Config machinery every stage shares: YAML in, a validated pydantic model out.

A stage (cohort build, fine-tuning, SSL pretraining, a pipeline) describes its settings as a
pydantic model with every default in one place and ``extra="forbid"`` (subclass
:class:`StrictModel`). This module does the rest, the same way for all of them:

* :func:`load_config` reads a YAML file, applies ``--set a.b.c=value`` overrides and validates;
* an override whose dotted path does not exist fails *before* validation, naming the path and
  the keys that are allowed there, so ``--set optim.lr=...`` with a typo never silently adds a
  key;
* a :class:`pydantic.ValidationError` becomes a :class:`ConfigError` whose message names every
  bad key, says what is wrong and lists the allowed keys (with a "did you mean" hint);
* :func:`to_yaml` and :func:`flatten` give the resolved config back as YAML (an artifact that
  reproduces the run) and as flat dotted keys (tracking parameters).

Example:
    >>> from medvision.training.config import FinetuneConfig
    >>> raw = {"data": {"cohort_dir": "cohorts/derm"}, "backbone": {"name": "bit-tiny"}}
    >>> parse_config(raw, FinetuneConfig, ["optim.lr=0.01"]).optim.lr
    0.01
    >>> parse_config(raw, FinetuneConfig, ["optim.lrr=0.01"])
    Traceback (most recent call last):
    ...
    medvision.config.ConfigError: config: override optim.lrr: unknown key 'optim.lrr'. Did you mean 'lr'? ...
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from medvision.errors import InputError

__all__ = [
    "ConfigError",
    "StrictModel",
    "apply_overrides",
    "did_you_mean",
    "explain_validation_error",
    "PLAIN_NAME",
    "flatten",
    "load_config",
    "parse_config",
    "read_yaml",
    "to_yaml",
]

M = TypeVar("M", bound=BaseModel)

#: A name that is safe as one folder name: stage ids and cohort names become paths under an output folder,
#: so no separator, no leading dot (``..``, hidden files) and nothing a shell or a URL would reinterpret.
PLAIN_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"

#: How many values a config may hold once YAML anchors/aliases (``&a`` / ``*a``) are expanded. Real configs
#: hold hundreds; a 1 KB "billion laughs" file expands to billions, which every later copy would materialise.
MAX_YAML_VALUES = 100_000


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, so a typo fails at load time."""

    model_config = ConfigDict(extra="forbid")


class ConfigError(InputError):
    """A config that cannot be used. The message names the file, the key and what is allowed (exit code 2)."""


# -- loading -----------------------------------------------------------------------------------


def load_config(path: str | Path, model: type[M], overrides: Sequence[str] | None = None) -> M:
    """Read a YAML config, apply ``key.path=value`` overrides and validate it as ``model``.

    Args:
        path: the YAML file; its top level must be a mapping.
        model: the stage's config model (a :class:`StrictModel` tree).
        overrides: ``"a.b.c=value"`` strings, applied in order; values are parsed as YAML
            scalars/flow values (``1e-3`` stays a number, ``[1, 2]`` a list, ``null`` is None).

    Returns:
        The validated config.

    Raises:
        ConfigError: missing/unreadable file, invalid YAML, an override naming an unknown key,
            or values that fail validation. The message names each bad key.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror})") from None
    raw = read_yaml(text, str(path))
    return parse_config({} if raw is None else raw, model, overrides, source=str(path))


def read_yaml(text: str, source: str) -> Any:
    """Parse YAML with the safe loader, refusing documents whose aliases expand beyond :data:`MAX_YAML_VALUES`.

    Why count before constructing: the safe loader itself builds aliases as shared references (cheap), but
    every consumer that copies or walks the result (overrides, ``${params}`` substitution, validation) pays
    for the *expanded* tree. The count walks the parsed node graph once, memoised per node, so it costs the
    size of the file, not of the expansion.

    Raises:
        ConfigError: invalid YAML, a self-referencing alias, or an alias bomb (naming ``source``).
    """
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: not valid YAML: {e}") from None
        if node is None:
            return None
        values = _expanded_size(node, {}, set(), source)
        if values > MAX_YAML_VALUES:
            raise ConfigError(
                f"{source}: refusing a YAML document whose anchors/aliases (&name / *name) expand to {values:,} "
                f"values (limit {MAX_YAML_VALUES:,}); this is the shape of an 'alias bomb'. Write the values out "
                "or use fewer nested aliases"
            )
        try:
            return loader.construct_document(node)
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: not valid YAML: {e}") from None
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, memo: dict[int, int], active: set[int], source: str) -> int:
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise ConfigError(f"{source}: a YAML alias refers to a value that contains itself; configs must be trees")
    active.add(key)
    if isinstance(node, yaml.MappingNode):
        total = 1 + sum(
            _expanded_size(k, memo, active, source) + _expanded_size(v, memo, active, source) for k, v in node.value
        )
    elif isinstance(node, yaml.SequenceNode):
        total = 1 + sum(_expanded_size(v, memo, active, source) for v in node.value)
    else:
        total = 1
    active.discard(key)
    memo[key] = total
    return total


def parse_config(
    raw: Mapping[str, Any], model: type[M], overrides: Sequence[str] | None = None, source: str = "config"
) -> M:
    """Validate an already-parsed mapping (plus overrides) as ``model``; see :func:`load_config`."""
    if not isinstance(raw, Mapping):
        allowed = ", ".join(model.model_fields)
        raise ConfigError(f"{source}: the top level must be a mapping of keys ({allowed})")
    data = apply_overrides(raw, overrides or [], model, source=source)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(explain_validation_error(err, model, source)) from None


def apply_overrides(
    raw: Mapping[str, Any], overrides: Sequence[str], model: type[BaseModel], source: str = "config"
) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``"a.b.c=value"`` override set.

    The dotted path is checked against ``model`` first: a key that the model does not have fails
    here, naming the full path and the keys allowed at that level. Below a free-form mapping
    field (``dict[str, ...]``, e.g. a head's options) any key is accepted; the component that
    owns the mapping validates it.

    Raises:
        ConfigError: malformed override, unknown key, or a path that goes below a plain value.
    """
    data = _deep_copy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"{source}: override {item!r} must look like section.key=value (e.g. optim.lr=0.01)")
        parts = key.split(".")
        _check_path(model, parts, source)
        keyed = _list_mapping_depth(model, parts)
        if keyed is not None and len(parts) > keyed + 1:  # `sweep.backbone.weights`: one key, `backbone.weights`
            parts = [*parts[:keyed], ".".join(parts[keyed:])]
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: override {key}: value {text!r} is not a valid YAML value ({e})") from None
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return data


# -- error messages ----------------------------------------------------------------------------


def explain_validation_error(err: ValidationError, model: type[BaseModel], source: str = "config") -> str:
    """One line per problem: the dotted key, what is wrong, and the keys allowed next to it."""
    lines = [f"{source}: invalid configuration ({err.error_count()} problem(s)):"]
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        where = ".".join(_walk(model, loc)[1]) or "(top level)"  # the key as written, without union tags
        if e["type"] == "extra_forbidden":
            allowed = _walk(model, loc[:-1])[0]
            hint = did_you_mean(loc[-1], allowed)
            lines.append(f"  - {where}: unknown key.{hint} Allowed here: {', '.join(allowed) or '(none)'}")
        elif e["type"] == "missing":
            lines.append(f"  - {where}: required, but not given")
        else:
            got = e.get("input")
            shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
            lines.append(f"  - {where}: {e['msg']}{shown}")
    return "\n".join(lines)


# -- output ------------------------------------------------------------------------------------


def to_yaml(config: BaseModel) -> str:
    """The config as YAML (JSON-compatible values, keys in declaration order): reloads to the same model."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, default_flow_style=False)


def flatten(config: BaseModel | Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flat ``{"a.b.c": value}`` view (tracking parameters). Lists stay values; empty mappings are kept."""
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, prefix=f"{name}."))
        else:
            out[name] = value
    return out


# -- private: walking a model's type tree ------------------------------------------------------


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _models_in(annotation: Any, through_lists: bool = False) -> list[type[BaseModel]] | None:
    """Config sections an annotation can hold; ``None`` when it is a free-form mapping (any key).

    ``through_lists`` also looks inside ``list[Section]`` (error locations index into lists;
    overrides do not: a list is set whole, as a YAML flow value).
    """
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _models_in(typing.get_args(annotation)[0], through_lists)
    if through_lists and origin in (list, tuple) and typing.get_args(annotation):
        return _models_in(typing.get_args(annotation)[0], through_lists)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if annotation is Any or annotation is dict or origin in (dict, Mapping):
        return None
    if origin in (typing.Union, types.UnionType):
        found: list[type[BaseModel]] = []
        for arg in typing.get_args(annotation):
            sub = _models_in(arg, through_lists)
            if sub is None:
                return None
            found.extend(sub)
        return found
    return []


def _check_path(model: type[BaseModel], parts: list[str], source: str) -> None:
    models: list[type[BaseModel]] | None = [model]
    for depth, part in enumerate(parts):
        if models is None:  # inside a free-form mapping: its owner validates the keys
            return
        here = ".".join(parts[:depth]) or "the top level"
        if not models:
            raise ConfigError(f"{source}: override {'.'.join(parts)}: {here} is a single value, it has no key {part!r}")
        holders = [m for m in models if part in m.model_fields]
        if not holders:
            allowed = sorted({k for m in models for k in m.model_fields})
            hint = did_you_mean(part, allowed)
            raise ConfigError(
                f"{source}: override {'.'.join(parts)}: unknown key {'.'.join(parts[: depth + 1])!r}.{hint} "
                f"Allowed under {here}: {', '.join(allowed)}"
            )
        next_models: list[type[BaseModel]] = []
        for m in holders:
            sub = _models_in(m.model_fields[part].annotation)
            if sub is None:
                next_models = None  # type: ignore[assignment]
                break
            next_models.extend(sub)
        models = next_models


def _list_mapping_depth(model: type[BaseModel], parts: list[str]) -> int | None:
    """How many parts of an override's path lead to a typed mapping of lists (a stage's ``sweep``, a cohort spec's
    ``labels.include``), or ``None``. Its keys are never paths (a sweep's are dotted config keys themselves), so the
    rest of the path is one key. A free-form mapping (a pipeline cohort stage's ``overrides``) has no type to say
    so, and its values nest as before. Walks through mappings of sections (``stages.ID``) and unions without judging
    keys: :func:`_check_path` does that."""
    models: list[type[BaseModel]] = [model]
    depth = 0
    while depth < len(parts) and models:
        holders = [m for m in models if parts[depth] in m.model_fields]
        if not holders:
            return None
        annotations = [h.model_fields[parts[depth]].annotation for h in holders]
        value = _mapping_value(annotations[0])
        if value is not None and typing.get_origin(value) in (list, Sequence):
            return depth + 1
        sections = _models_in(value) if value is not None else None
        if sections:  # ``stages``: the next part is a key the user chose, then one of these sections
            models, depth = sections, depth + 2
        else:
            models, depth = [m for a in annotations for m in (_models_in(a) or [])], depth + 1
    return None


def _mapping_value(annotation: Any) -> Any | None:
    """The ``V`` of a ``dict[str, V]`` (also inside ``Annotated`` or ``| None``); ``None`` for anything else."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _mapping_value(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        values = [_mapping_value(a) for a in typing.get_args(annotation) if a is not type(None)]
        return next((v for v in values if v is not None), None)
    args = typing.get_args(annotation)
    return args[1] if origin in (dict, Mapping) and len(args) == 2 else None


def _walk(model: type[BaseModel], loc: list[str]) -> tuple[list[str], list[str]]:
    """Follow an error location through ``model``: the keys allowed at its end, and the location as the user
    wrote it. Pydantic names a discriminated union's member by its tag (``stages.hod.finetune.sweeps``); that
    part is how we find the member, and it is left out of what we show (``stages.hod.sweeps``)."""
    models: list[type[BaseModel]] = [model]
    shown: list[str] = []
    key_next = False  # the previous part was a mapping of sections (``stages``): this part is its key
    for part in loc:
        if part.isdigit() or key_next or not models:  # a list index, a section's key, or past what we know
            key_next = False
            shown.append(part)
            continue
        tagged = [m for m in models if _literal_tag(m) == part]
        if len(models) > 1 and tagged:
            models = tagged
            continue
        shown.append(part)
        nxt: list[type[BaseModel]] = []
        for m in (m for m in models if part in m.model_fields):
            annotation = m.model_fields[part].annotation
            values = _mapping_value_models(annotation)
            if values:
                nxt.extend(values)
                key_next = True
                continue
            sub = _models_in(annotation, through_lists=True)
            if sub is None:  # a plain value: nothing below it has keys
                nxt = []
                break
            nxt.extend(sub)
        models = nxt
    return sorted({k for m in models for k in m.model_fields}), shown


def _mapping_value_models(annotation: Any) -> list[type[BaseModel]]:
    """The section models of a ``dict[str, Section]`` field (e.g. a pipeline's stages); empty otherwise."""
    if typing.get_origin(annotation) in (dict, Mapping) and len(typing.get_args(annotation)) == 2:
        return _models_in(typing.get_args(annotation)[1]) or []
    return []


def _literal_tag(model: type[BaseModel]) -> str | None:
    """The value of a model's single-value ``Literal`` field (a discriminated union's tag), if it has one."""
    for field in model.model_fields.values():
        if typing.get_origin(field.annotation) is typing.Literal and len(typing.get_args(field.annotation)) == 1:
            return str(typing.get_args(field.annotation)[0])
    return None


def did_you_mean(word: str, allowed: Sequence[str]) -> str:
    """`` Did you mean 'x'?`` for the closest allowed spelling, or nothing: the tail of a "no such key" message."""
    close = difflib.get_close_matches(word, list(allowed), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""
