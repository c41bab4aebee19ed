"""Checks that the NinjaScript strategy uses only NT8 members shown in the NT8 Help Guide.

``ninjascript/Simulator/nt8-api.txt`` lists every NT8 member the simulator exposes, each with the
Help Guide page it was verified on (its format is documented at the top of that file). This module
reads compiled assemblies with Mono.Cecil (through pythonnet, in the Mono the tests already host;
nothing is loaded into the runtime, the files are only read) and checks two things:

- :func:`check_strategy`: every member of the simulator's ``NinjaTrader.*`` types that a compiled
  strategy uses (member references: methods, property getters and setters, fields, constructors;
  type references such as enums; the NT8 virtual methods it overrides, with their parameter
  names; the simulator attributes it applies, such as ``[NinjaScriptProperty]``) is on the list,
  with the same signature, and in the verified part of it unless the entry carries ``allow:``;
- :func:`check_list`: every entry of the list exists in the simulator with exactly that signature,
  and every public or protected member of the simulator's ``NinjaTrader.*`` types is listed, so
  that the list and the simulator cannot drift apart.

Both return a :class:`Report` whose ``problems`` say what to fix, in words.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
API_LIST = REPO / "ninjascript" / "Simulator" / "nt8-api.txt"

KINDS = ("type", "enum", "attribute", "ctor", "method", "override", "property", "field", "event", "member")
UNVERIFIED_SECTION = "not in the Help Guide"
_SECTION = re.compile(r"^#\s*-{3,}\s*section:\s*(?P<name>.+?)\s*-{3,}\s*$")
# the signature runs to the first " [" (signatures have none); the sources to the "]" that ends the line or
# comes before "allow:" (sources may quote code with brackets)
_ENTRY = re.compile(r"^(?P<kind>[a-z]+)\s+(?P<body>.*?)\s+\[(?P<sources>.+?)\]\s*(?:allow:\s*(?P<allow>.*?))?\s*$")

# The strategy sees the members of these three classes as its own: the list names them "Strategy".
STRATEGY = "Strategy"
STRATEGY_CHAIN = ("NinjaTrader.NinjaScript.Strategies.Strategy", "NinjaTrader.NinjaScript.StrategyBase",
                  "NinjaTrader.NinjaScript.NinjaScriptBase")
NT8_NAMESPACE = "NinjaTrader."

_KEYWORDS = {
    "System.Void": "void", "System.Boolean": "bool", "System.Byte": "byte", "System.SByte": "sbyte",
    "System.Char": "char", "System.Int16": "short", "System.UInt16": "ushort", "System.Int32": "int",
    "System.UInt32": "uint", "System.Int64": "long", "System.UInt64": "ulong", "System.Single": "float",
    "System.Double": "double", "System.Decimal": "decimal", "System.String": "string", "System.Object": "object",
}


class ApiListError(ValueError):
    """nt8-api.txt does not follow its format; the message names the line."""


# --------------------------------------------------------------------------- the list


def normalize(text: str) -> str:
    """A signature with canonical spacing: one space between words, none before punctuation nor after
    an opening one (``int[] values`` keeps the space that separates the type from the name)."""
    text = re.sub(r"\s+", " ", text.strip())
    text = re.sub(r" (?=[()\[\]<>{},;:=?])", "", text)
    return re.sub(r"(?<=[(\[<{,;:=]) ", "", text)


def _split_params(inner: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in inner:
        if ch in "<[":
            depth += 1
        elif ch in ">]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def _param_types(inner: str) -> str:
    """``int quantity, double limitPrice`` -> ``int,double`` (what tells overloads apart)."""
    types = []
    for p in _split_params(inner):
        parts = p.rsplit(" ", 1)
        if len(parts) != 2:
            raise ValueError(f"parameter {p!r} has no name")
        types.append(normalize(parts[0]))
    return ",".join(types)


_MODIFIERS = ("static", "readonly", "protected", "const")


def _strip_modifiers(body: str) -> tuple[list[str], str]:
    mods = []
    while True:
        word, _, rest = body.partition(" ")
        if word in _MODIFIERS and rest:
            mods.append(word)
            body = rest
        else:
            return mods, body


@dataclass(frozen=True)
class Entry:
    """One line of nt8-api.txt."""

    kind: str
    body: str            # the signature as written
    sources: str         # Help Guide pages, or in the unverified section what was found instead
    verified: bool       # False in the "not in the Help Guide" section
    allow: str | None    # justification that lets a strategy use an unverified entry
    line: int

    @property
    def text(self) -> str:
        return f"{self.kind} {self.body}"

    @property
    def signature(self) -> str:
        """Canonical form, compared with what the simulator assembly says."""
        return normalize(self.text)

    @property
    def type_name(self) -> str:
        """Full name for type/enum/attribute entries."""
        return normalize(re.split(r"[\s:{(]", self.body.strip(), maxsplit=1)[0])

    @property
    def keys(self) -> tuple[str, ...]:
        """What identifies the entry (kind-independent, so a use finds it whatever the kind)."""
        body = normalize(self.body)
        if self.kind in ("type", "enum"):
            return ("type:" + self.type_name.rsplit(".", 1)[-1],)
        if self.kind == "attribute":
            short = self.type_name.rsplit(".", 1)[-1]
            inner = body[body.index("(") + 1: body.rindex(")")]
            return ("type:" + short, f"ctor:{short}({_param_types(inner)})")
        _, rest = _strip_modifiers(self.body.strip())
        rest = normalize(rest)
        if self.kind == "ctor":
            name = rest[: rest.index("(")]
            return (f"ctor:{name}({_param_types(rest[rest.index('(') + 1: rest.rindex(')')])})",)
        if self.kind in ("method", "override"):
            name = rest[: rest.index("(")]
            return (f"method:{name}({_param_types(rest[rest.index('(') + 1: rest.rindex(')')])})",)
        if self.kind in ("property", "field", "event"):
            return (f"{self.kind}:{rest.split(':', 1)[0]}",)
        if self.kind == "member":
            return ("member:" + rest.split("=", 1)[0],)
        raise AssertionError(self.kind)

    def enum_members(self) -> list[tuple[str, int]]:
        body = normalize(self.body)
        inner = body[body.index("{") + 1: body.rindex("}")]
        out = []
        for item in filter(None, inner.split(",")):
            name, eq, value = item.partition("=")
            if not eq:
                raise ValueError(f"enum member {item!r} has no '= value'")
            out.append((name, int(value)))
        return out

    def member_value(self) -> tuple[str, str, int]:
        """(enum short name, member name, value) of a ``member`` entry."""
        _, rest = _strip_modifiers(self.body.strip())
        name, _, value = normalize(rest).partition("=")
        enum, _, member = name.rpartition(".")
        return enum, member, int(value)

    def where(self) -> str:
        return f"nt8-api.txt line {self.line}"


@dataclass
class ApiList:
    entries: list[Entry]
    path: Path

    def by_key(self) -> dict[str, Entry]:
        out: dict[str, Entry] = {}
        for e in self.entries:
            for k in e.keys:
                out[k] = e
        return out

    def named(self, key: str) -> list[Entry]:
        """Entries whose key has the same member name as ``key`` (other overloads, other kinds)."""
        name = re.split(r"\(", key.split(":", 1)[1])[0]
        return [e for e in self.entries for k in e.keys if re.split(r"\(", k.split(":", 1)[1])[0] == name]


def parse_api_list(path: Path = API_LIST) -> ApiList:
    """Read nt8-api.txt; raise :class:`ApiListError` on a line that does not follow the format."""
    entries, verified, seen = [], True, {}
    for no, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            m = _SECTION.match(line)
            if m:
                name = m.group("name").strip()
                if name not in ("Help Guide", UNVERIFIED_SECTION):
                    raise ApiListError(f"{path.name}:{no}: unknown section {name!r}")
                verified = name == "Help Guide"
            continue
        m = _ENTRY.match(line)
        if m is None or m.group("kind") not in KINDS:
            raise ApiListError(f"{path.name}:{no}: not '<kind> <signature>  [<pages>]' with kind one of "
                               f"{', '.join(KINDS)}: {line}")
        allow = m.group("allow")
        if allow is not None and (verified or not allow.strip()):
            raise ApiListError(f"{path.name}:{no}: 'allow: <reason>' belongs to entries of the "
                               f"'{UNVERIFIED_SECTION}' section and needs a reason")
        entry = Entry(m.group("kind"), m.group("body").strip(), m.group("sources").strip(), verified,
                      allow.strip() if allow else None, no)
        try:
            keys = entry.keys
            if entry.kind == "enum":
                entry.enum_members()
            if entry.kind == "member":
                entry.member_value()
        except (ValueError, IndexError) as exc:
            raise ApiListError(f"{path.name}:{no}: {exc}: {line}") from None
        if entry.kind == "member" and verified:
            raise ApiListError(f"{path.name}:{no}: 'member' lines (enum members outside the Help Guide) "
                               f"belong to the '{UNVERIFIED_SECTION}' section")
        for k in keys:
            if k in seen:
                raise ApiListError(f"{path.name}:{no}: {k} is already listed on line {seen[k]}")
            seen[k] = no
        entries.append(entry)
    return ApiList(entries, path)


# --------------------------------------------------------------------------- Mono.Cecil


def load_cecil():
    """The Mono.Cecil namespace, referenced into the running Mono (pythonnet must be loaded)."""
    import clr

    try:
        clr.AddReference("Mono.Cecil")
    except Exception:  # noqa: BLE001 - the GAC wants a full name; take the newest GAC copy by path
        gac = sorted(Path("/usr/lib/mono/gac/Mono.Cecil").glob("*/Mono.Cecil.dll"),
                     key=lambda p: tuple(int(x) for x in p.parent.name.split("__")[0].split(".")))
        if not gac:
            raise RuntimeError("Mono.Cecil is not in Mono's GAC (Debian/Ubuntu: apt-get install mono-devel)") from None
        clr.AddReference(str(gac[-1]))
    import Mono.Cecil as cecil

    return cecil


def cs_type(t, out: bool = False) -> str:
    """A Cecil TypeReference as C# writes it: keywords for primitives, short names otherwise."""
    if t.IsByReference:
        return ("out " if out else "ref ") + cs_type(t.ElementType)
    if t.IsArray:
        return cs_type(t.ElementType) + "[" + "," * (t.Rank - 1) + "]"
    if t.IsGenericInstance:
        args = [cs_type(a) for a in t.GenericArguments]
        if t.ElementType.FullName == "System.Nullable`1":
            return args[0] + "?"
        return t.ElementType.Name.split("`")[0] + "<" + ", ".join(args) + ">"
    if t.FullName in _KEYWORDS:
        return _KEYWORDS[t.FullName]
    if t.DeclaringType is not None:
        return cs_type(t.DeclaringType) + "." + t.Name
    return t.Name


def _params(method) -> str:
    return ", ".join(f"{'params ' if _is_params(p) else ''}{cs_type(p.ParameterType, p.IsOut)} {p.Name}"
                     for p in method.Parameters)


def _is_params(p) -> bool:
    return any(a.AttributeType.FullName == "System.ParamArrayAttribute" for a in p.CustomAttributes)


def _visible(m) -> bool:
    """Public or protected, as a derived strategy sees it."""
    return bool(m.IsPublic or m.IsFamily or m.IsFamilyOrAssembly)


def _owner(type_def) -> str:
    return STRATEGY if type_def.FullName in STRATEGY_CHAIN else cs_type(type_def)


def _is_attribute(type_def) -> bool:
    base = type_def.BaseType
    while base is not None:
        if base.FullName == "System.Attribute":
            return True
        try:
            base = base.Resolve().BaseType
        except Exception:  # noqa: BLE001 - outside what can be resolved: not an attribute of ours
            return False
    return False


def _type_kind(t) -> str:
    if t.IsEnum:
        return "enum"
    if t.IsInterface:
        return "interface"
    if t.IsAbstract and t.IsSealed:
        return "static class"
    if t.IsAbstract:
        return "abstract class"
    if t.IsSealed:
        return "sealed class"
    return "class"


def describe_type(t) -> str:
    """The canonical ``type``/``enum``/``attribute`` text of a simulator type (all enum members)."""
    if t.IsEnum:
        members = ", ".join(f"{f.Name} = {int(f.Constant)}" for f in t.Fields if f.IsStatic and f.HasConstant)
        return f"enum {t.FullName} {{ {members} }}"
    if _is_attribute(t):
        ctors = [m for m in t.Methods if m.IsConstructor and not m.IsStatic and m.IsPublic]
        return f"attribute {t.FullName}({_params(ctors[0]) if ctors else ''})"
    return f"type {t.FullName} : {_type_kind(t)}"


def describe_method(m) -> str:
    owner = _owner(m.DeclaringType)
    if m.IsConstructor:
        return f"ctor {'protected ' if not m.IsPublic else ''}{cs_type(m.DeclaringType)}({_params(m)})"
    if m.IsVirtual and not m.IsPublic:
        return f"override {owner}.{m.Name}({_params(m)}) : {cs_type(m.ReturnType)}"
    mods = ("static " if m.IsStatic else "") + ("protected " if not m.IsPublic else "")
    return f"method {mods}{owner}.{m.Name}({_params(m)}) : {cs_type(m.ReturnType)}"


def describe_property(p) -> str:
    accessors = []
    for word, acc in (("get", p.GetMethod), ("set", p.SetMethod)):
        if acc is not None and _visible(acc):
            accessors.append(("" if acc.IsPublic else "protected ") + word + ";")
    acc0 = p.GetMethod or p.SetMethod
    static = "static " if acc0 is not None and acc0.IsStatic else ""
    return f"property {static}{_owner(p.DeclaringType)}.{p.Name} : {cs_type(p.PropertyType)} {{ {' '.join(accessors)} }}"


def describe_field(f) -> str:
    mods = ("const " if f.HasConstant else ("static " if f.IsStatic else "")) + ("readonly " if f.IsInitOnly else "")
    return f"field {mods}{_owner(f.DeclaringType)}.{f.Name} : {cs_type(f.FieldType)}"


def describe_event(e) -> str:
    static = "static " if e.AddMethod is not None and e.AddMethod.IsStatic else ""
    return f"event {static}{_owner(e.DeclaringType)}.{e.Name} : {cs_type(e.EventType)}"


def _key_of(kind: str, text: str) -> str:
    return Entry(kind, text.split(" ", 1)[1], "-", True, None, 0).keys[-1]


@dataclass(frozen=True)
class Surface:
    """One public NT8 member of the simulator assembly, in the list's canonical form."""

    key: str
    text: str            # e.g. "property Order.Filled : int { get; }"
    enum_members: tuple[tuple[str, int], ...] = ()


def _nt8_types(module) -> Iterator:
    def public(types):
        for t in types:
            if t.IsPublic or t.IsNestedPublic or t.IsNestedFamily:
                yield t
                yield from public(t.NestedTypes)

    for t in public(module.Types):
        if t.FullName.startswith(NT8_NAMESPACE):
            yield t


def simulator_surface(module) -> dict[str, Surface]:
    """Every public or protected member of the simulator's public ``NinjaTrader.*`` types, by key.

    Members of NinjaScriptBase and StrategyBase are filed under ``Strategy``; their own constructors
    are only reachable through ``Strategy()`` and are left out. Accessor methods are described as
    their property; an enum is one entry holding all its members.
    """
    out: dict[str, Surface] = {}

    def add(kind: str, text: str, members: tuple = ()) -> None:
        key = _key_of(kind, text)
        out[key] = Surface(key, text, members)

    for t in _nt8_types(module):
        desc = describe_type(t)
        if t.IsEnum:
            members = tuple((f.Name, int(f.Constant)) for f in t.Fields if f.IsStatic and f.HasConstant)
            add("enum", desc, members)
            continue
        add(desc.split(" ", 1)[0], desc)
        attribute = desc.startswith("attribute ")
        accessors = set()
        for p in t.Properties:
            for acc in (p.GetMethod, p.SetMethod):
                if acc is not None:
                    accessors.add(acc.FullName)
            if any(acc is not None and _visible(acc) for acc in (p.GetMethod, p.SetMethod)):
                add("property", describe_property(p))
        for e in t.Events:
            for acc in (e.AddMethod, e.RemoveMethod):
                if acc is not None:
                    accessors.add(acc.FullName)
            if e.AddMethod is not None and _visible(e.AddMethod):
                add("event", describe_event(e))
        for m in t.Methods:
            if not _visible(m) or m.FullName in accessors or (m.IsConstructor and m.IsStatic):
                continue
            if m.IsConstructor and (attribute or t.FullName in STRATEGY_CHAIN[1:]):
                continue  # an attribute's constructor is its entry; the base classes' only through Strategy()
            add("ctor" if m.IsConstructor else "method", describe_method(m))
        for f in t.Fields:
            if _visible(f) and not f.IsSpecialName:
                add("field", describe_field(f))
    return out


# --------------------------------------------------------------------------- reports


@dataclass
class Use:
    """A member of the simulator's NT8 surface used by the strategy."""

    key: str
    text: str                    # canonical text of the member in the simulator
    how: str                     # e.g. "calls", "reads", "overrides", "applies"
    detail: str = ""             # extra observations (e.g. parameter names of an override)


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    uses: list[Use] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        if self.ok:
            return f"{len(self.uses)} NT8 members used, all on the list"
        return f"{len(self.problems)} problem(s):\n" + "\n".join(f"- {p}" for p in self.problems)


def _pages(entry: Entry) -> str:
    return f"[{entry.sources}]"


def _type_header(text: str) -> str:
    """What a type entry says about the type itself (an enum's members are checked against the simulator)."""
    return normalize(text.split("{")[0] if text.startswith("enum ") else text)


def _page_hint(key: str) -> str:
    """Where the Help Guide most likely documents a member: pages are named after it in lower case."""
    name = key.split(":", 1)[1].split("(")[0].rsplit(".", 1)[-1]
    return f"probably https://ninjatrader.com/support/helpGuides/nt8/{name.lower()}.htm"


# --------------------------------------------------------------------------- list <-> simulator


def check_list(simulator_dll: Path, api_list: Path = API_LIST) -> Report:
    """Every list entry exists in the simulator with exactly its signature, and the reverse."""
    cecil = load_cecil()
    listed = parse_api_list(api_list)
    report = Report()
    module = cecil.ModuleDefinition.ReadModule(str(simulator_dll))
    try:
        surface = simulator_surface(module)
    finally:
        module.Dispose()
    by_key = listed.by_key()
    members = {}  # enum short name -> {member: value} of 'member' entries
    for e in listed.entries:
        if e.kind == "member":
            enum, name, value = e.member_value()
            members.setdefault(enum, {})[name] = (value, e)
    for e in listed.entries:
        if e.kind == "member":
            continue
        key = e.keys[-1] if e.kind == "attribute" else e.keys[0]
        s = surface.get(key)
        if s is None:
            others = [x.text for k, x in surface.items() if k.split("(")[0] == key.split("(")[0]]
            hint = f"; the simulator has: {'; '.join(others)}" if others else ""
            report.problems.append(f"{e.where()}: '{e.text}' is not in the simulator assembly{hint}")
            continue
        if e.kind == "enum":
            short = e.type_name.rsplit(".", 1)[-1]
            header = normalize(f"enum {e.type_name}")
            if not normalize(s.text).startswith(header + "{"):
                report.problems.append(f"{e.where()}: '{e.text}' differs from the simulator's '{s.text}'")
                continue
            listed_members = dict(e.enum_members())
            extra = members.get(short, {})
            for name, value in s.enum_members:
                if name in listed_members:
                    if listed_members[name] != value:
                        report.problems.append(f"{e.where()}: {short}.{name} = {listed_members[name]} on the list, "
                                               f"{value} in the simulator")
                elif name in extra:
                    if extra[name][0] != value:
                        report.problems.append(f"{extra[name][1].where()}: {short}.{name} = {extra[name][0]} on the "
                                               f"list, {value} in the simulator")
                else:
                    report.problems.append(f"{e.where()}: the simulator's {short}.{name} = {value} is not listed "
                                           f"(add it to the enum line if the Help Guide shows it, else a 'member' "
                                           f"line under '{UNVERIFIED_SECTION}')")
            sim_names = {n for n, _ in s.enum_members}
            for name in list(listed_members) + list(extra):
                if name not in sim_names:
                    report.problems.append(f"{e.where()}: {short}.{name} is listed but not in the simulator's enum")
            continue
        if normalize(s.text) != e.signature:
            report.problems.append(f"{e.where()}: '{e.text}' differs from the simulator's '{s.text}'")
    for enum, names in members.items():
        if f"type:{enum}" not in by_key:
            for name, (_, e) in names.items():
                report.problems.append(f"{e.where()}: {enum}.{name} belongs to no listed enum")
    for key, s in surface.items():
        if key not in by_key:
            report.problems.append(f"the simulator's public '{s.text}' is not on {api_list.name}: check the Help Guide "
                                   f"and list it (or make it internal if it is engine plumbing)")
    return report


# --------------------------------------------------------------------------- strategy -> list


class _Reader:
    """The simulator and strategy modules, with look-ups from the strategy's references to definitions."""

    def __init__(self, cecil, simulator_dll: Path, strategy_dll: Path) -> None:
        self.sim = cecil.ModuleDefinition.ReadModule(str(simulator_dll))
        self.strategy = cecil.ModuleDefinition.ReadModule(str(strategy_dll))
        self.sim_name = self.sim.Assembly.Name.Name

    def close(self) -> None:
        self.strategy.Dispose()
        self.sim.Dispose()

    def in_simulator(self, t) -> bool:
        scope = t.GetElementType().Scope
        while t.DeclaringType is not None:
            t = t.DeclaringType
            scope = t.Scope
        return str(scope.MetadataScopeType) == "AssemblyNameReference" and scope.Name == self.sim_name

    def sim_type(self, t):
        """The simulator's TypeDefinition of a reference into it."""
        t = t.GetElementType()
        found = self.sim.GetType(t.FullName)
        if found is None:
            raise LookupError(f"{t.FullName} is not in {self.sim_name}")
        return found

    def base_in_simulator(self, t):
        """Walk the strategy type's bases to the first one defined in the simulator (or None)."""
        base = t.BaseType
        while base is not None:
            if self.in_simulator(base):
                return self.sim_type(base)
            own = self.strategy.GetType(base.FullName) if str(base.Scope.MetadataScopeType) == "ModuleDefinition" else None
            if own is None:
                return None
            base = own.BaseType
        return None


def _same_signature(a, b) -> bool:
    return (a.Name == b.Name and a.Parameters.Count == b.Parameters.Count
            and a.ReturnType.FullName == b.ReturnType.FullName
            and all(x.ParameterType.FullName == y.ParameterType.FullName for x, y in zip(a.Parameters, b.Parameters)))


def _find_method(type_def, ref):
    t = type_def
    while t is not None:
        for m in t.Methods:
            if _same_signature(m, ref):
                return m
        t = type_def.Module.GetType(t.BaseType.FullName) if t.BaseType is not None else None
    return None


def _find_field(type_def, ref):
    t = type_def
    while t is not None:
        for f in t.Fields:
            if f.Name == ref.Name:
                return f
        t = type_def.Module.GetType(t.BaseType.FullName) if t.BaseType is not None else None
    return None


def _all_custom_attribute_owners(module) -> Iterator:
    yield module.Assembly
    yield module

    def walk(types):
        for t in types:
            yield t
            for m in t.Methods:
                yield m
                yield m.MethodReturnType
                yield from m.Parameters
            yield from t.Properties
            yield from t.Fields
            yield from t.Events
            yield from walk(t.NestedTypes)

    yield from walk(module.Types)


def strategy_uses(reader: _Reader) -> tuple[list[Use], list[str]]:
    """What the strategy module uses of the simulator, and references that are not NT8 at all."""
    uses: dict[str, Use] = {}
    foreign: list[str] = []

    def use(key: str, text: str, how: str, detail: str = "") -> None:
        if key in uses:
            if how not in uses[key].how.split(", "):
                uses[key].how += ", " + how
            if detail and detail not in uses[key].detail:
                uses[key].detail = "; ".join(filter(None, (uses[key].detail, detail)))
        else:
            uses[key] = Use(key, text, how, detail)

    def use_type(td) -> None:
        if not td.FullName.startswith(NT8_NAMESPACE):
            msg = f"the strategy uses the simulator's {td.FullName}, which is engine plumbing, not NT8"
            if msg not in foreign:
                foreign.append(msg)
            return
        desc = describe_type(td)
        use(_key_of(desc.split(' ', 1)[0], desc), desc, "names the type")

    for tr in reader.strategy.GetTypeReferences():
        if reader.in_simulator(tr):
            use_type(reader.sim_type(tr))

    for mr in reader.strategy.GetMemberReferences():
        owner_ref = mr.DeclaringType
        if owner_ref is None or owner_ref.IsArray or not reader.in_simulator(owner_ref):
            continue  # (an array's Get/Set/Address are the runtime's, not the simulator's)
        td = reader.sim_type(owner_ref)
        if not td.FullName.startswith(NT8_NAMESPACE):
            use_type(td)
            continue
        if hasattr(mr, "Parameters"):  # a MethodReference
            md = _find_method(td, mr)
            if md is None:
                foreign.append(f"the strategy calls {mr.FullName}, which the simulator does not define")
                continue
            if md.IsConstructor:
                if _is_attribute(md.DeclaringType):
                    desc = describe_type(md.DeclaringType)
                    use(_key_of("attribute", desc), desc, "applies")
                else:
                    desc = describe_method(md)
                    use(_key_of("ctor", desc), desc, "constructs")
                continue
            prop = next((p for p in md.DeclaringType.Properties
                         if (p.GetMethod is not None and p.GetMethod.FullName == md.FullName)
                         or (p.SetMethod is not None and p.SetMethod.FullName == md.FullName)), None)
            event = next((e for e in md.DeclaringType.Events
                          if any(a is not None and a.FullName == md.FullName for a in (e.AddMethod, e.RemoveMethod))), None)
            if prop is not None:
                desc = describe_property(prop)
                use(_key_of("property", desc), desc, "reads" if md.Name.startswith("get_") else "sets")
            elif event is not None:
                desc = describe_event(event)
                use(_key_of("event", desc), desc, "subscribes to")
            else:
                desc = describe_method(md)
                use(_key_of(desc.split(" ", 1)[0], desc), desc, "calls")
        else:  # a FieldReference
            fd = _find_field(td, mr)
            if fd is None:
                foreign.append(f"the strategy reads {mr.FullName}, which the simulator does not define")
                continue
            desc = describe_field(fd)
            use(_key_of("field", desc), desc, "reads")

    def strategy_types(types):
        for t in types:
            yield t
            yield from strategy_types(t.NestedTypes)

    for t in strategy_types(reader.strategy.Types):
        base = reader.base_in_simulator(t)
        if base is None:
            continue
        for m in t.Methods:
            if not m.IsVirtual or m.IsNewSlot:
                continue
            b = base
            while b is not None:
                found = next((x for x in b.Methods if x.IsVirtual and x.Name == m.Name
                              and x.Parameters.Count == m.Parameters.Count
                              and all(p.ParameterType.FullName == q.ParameterType.FullName
                                      for p, q in zip(x.Parameters, m.Parameters))), None)
                if found is not None:
                    break
                b = reader.sim.GetType(b.BaseType.FullName) if b.BaseType is not None else None
            if found is None:
                continue  # overrides something outside the simulator (object.ToString...)
            desc = describe_method(found)
            theirs = [p.Name for p in m.Parameters]
            ours = [p.Name for p in found.Parameters]
            detail = ""
            if theirs != ours:
                detail = f"{t.Name}.{m.Name} names its parameters ({', '.join(theirs)}) where NT8 has ({', '.join(ours)})"
            use(_key_of(desc.split(" ", 1)[0], desc), desc, "overrides", detail)

    for owner in _all_custom_attribute_owners(reader.strategy):
        for ca in owner.CustomAttributes:
            if reader.in_simulator(ca.AttributeType):
                td = reader.sim_type(ca.AttributeType)
                desc = describe_type(td)
                use(_key_of(desc.split(" ", 1)[0], desc), desc, "applies")
    return sorted(uses.values(), key=lambda u: u.key), foreign


_NOT_CODE = re.compile(r'//[^\n]*|/\*.*?\*/|@"(?:[^"]|"")*"|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])+\'', re.S)


def _code_only(text: str) -> str:
    """C# source with comments, strings and chars blanked (newlines kept, so line numbers hold)."""
    return _NOT_CODE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def _enum_member_uses(api: ApiList, sources: Iterable[Path]) -> list[tuple[Entry, Path, int]]:
    """Unverified enum members (``member`` lines) written in the strategy's sources.

    Enum values are compiled into the IL as numbers, so this is the one check done on the source.
    """
    hits = []
    members = [e for e in api.entries if e.kind == "member"]
    for path in sources:
        text = _code_only(path.read_text(encoding="utf-8", errors="replace"))
        for e in members:
            enum, name, _ = e.member_value()
            for m in re.finditer(rf"\b{re.escape(enum)}\s*\.\s*{re.escape(name)}\b", text):
                hits.append((e, path, text.count("\n", 0, m.start()) + 1))
    return hits


def check_strategy(strategy_dll: Path, simulator_dll: Path, api_list: Path = API_LIST,
                   sources: Iterable[Path] = ()) -> Report:
    """Check every NT8 member a compiled strategy uses against nt8-api.txt.

    ``sources`` (the strategy's .cs files) let the check see enum members, which the compiler turns
    into plain numbers.
    """
    cecil = load_cecil()
    api = parse_api_list(api_list)
    by_key = api.by_key()
    reader = _Reader(cecil, simulator_dll, strategy_dll)
    try:
        if not any(r.Name == reader.sim_name for r in reader.strategy.AssemblyReferences):
            return Report([f"{strategy_dll.name} does not reference the simulator assembly {reader.sim_name}"])
        uses, foreign = strategy_uses(reader)
    finally:
        reader.close()
    report = Report(list(foreign), uses)
    for u in uses:
        entry = by_key.get(u.key)
        if entry is None:
            others = api.named(u.key)
            hint = ("; the list has " + "; ".join(f"'{e.text}' (line {e.line})" for e in others)) if others else ""
            report.problems.append(f"the strategy {u.how} '{u.text}', which is not on {api.path.name}: check it on "
                                   f"its NT8 Help Guide page ({_page_hint(u.key)}) and add it with that page, or "
                                   f"under '{UNVERIFIED_SECTION}' with what you found{hint}")
            continue
        if entry.kind in ("type", "enum", "attribute"):
            if _type_header(entry.text) != _type_header(u.text):
                report.problems.append(f"the strategy {u.how} '{_type_header(u.text)}' but {entry.where()} says "
                                       f"'{_type_header(entry.text)}'")
        elif entry.signature != normalize(u.text):
            report.problems.append(f"the strategy {u.how} '{u.text}' but {entry.where()} says '{entry.text}' "
                                   f"{_pages(entry)}: one of them is wrong, check the Help Guide")
        if u.detail:
            report.problems.append(f"{u.detail}: use the Help Guide's parameter names {_pages(entry)}")
        if not entry.verified and entry.allow is None:
            report.problems.append(f"the strategy {u.how} '{u.text}', which is not in the Help Guide "
                                   f"({entry.where()}: {entry.sources}); use a documented member, or justify it "
                                   f"with 'allow: <reason>' on that line")
    for e, path, line in _enum_member_uses(api, sources):
        if e.allow is None:
            enum, name, _ = e.member_value()
            report.problems.append(f"{path.name}:{line} uses {enum}.{name}, which is not in the Help Guide "
                                   f"({e.where()}: {e.sources}); use a documented member, or justify it with "
                                   f"'allow: <reason>' on that line")
    return report
