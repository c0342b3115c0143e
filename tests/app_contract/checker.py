"""The app-source checker behind tests/test_app_sources.py: signature files, tree-sitter walks, Kotlin and
Swift call checks, version pins. See that test module's docstring for what is checked and what is not."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ANDROID, IOS = ROOT / "examples" / "android", ROOT / "examples" / "ios"
KOTLIN_DIR, SWIFT_DIR = ANDROID / "app/src/main/java/org/smolship/chat", IOS / "SmolshipChat"
PROJECT_YML, LIBS_TOML = IOS / "project.yml", ANDROID / "gradle/libs.versions.toml"
APP_GRADLE = ANDROID / "app/build.gradle.kts"
CONTRACT = Path(__file__).parent
PLATFORM = json.loads((CONTRACT / "platform_names.json").read_text())

# --- signature files -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    label: str  # Swift: the argument label ("_" for none); Kotlin: the parameter's name
    type: str
    default: bool  # may be left out of a call
    closure: bool = False  # takes a closure (where a Swift trailing closure binds)


@dataclass(frozen=True)
class Sig:
    text: str  # as the contract file writes it, for messages
    params: tuple[Param, ...]
    returns: str
    throws: bool = False
    is_async: bool = False
    abstract: bool = False  # an interface method every implementation must override


@dataclass(frozen=True)
class Prop:
    type: str
    settable: bool


@dataclass
class TypeApi:
    name: str
    kind: str
    module: str = ""
    inits: list[Sig] = field(default_factory=list)
    methods: dict[str, list[Sig]] = field(default_factory=dict)
    statics: dict[str, list[Sig]] = field(default_factory=dict)
    props: dict[str, Prop] = field(default_factory=dict)  # Kotlin: companion constants


@dataclass
class Contract:
    raw: dict
    types: dict[str, TypeApi]  # by simple name
    fqns: dict[str, str]  # Kotlin: fully qualified name -> simple name
    modules: dict[str, list[str]]  # SwiftPM product -> the modules it makes importable


def _split_top(text: str) -> list[str]:
    """`text` split at commas outside brackets (closure and generic types hold commas)."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch in "([<"
        depth -= ch in ")]>" and text[i - 1:i + 1] != "->"
        if ch == "," and depth == 0:
            out.append(text[start:i])
            start = i + 1
    return [p.strip() for p in [*out, text[start:]] if p.strip()]


def _params_span(text: str) -> tuple[int, int]:
    """Where a declaration's parameter list opens and closes."""
    open_, depth = text.index("("), 0
    for i in range(open_, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return open_, i
    raise ValueError(f"unbalanced parameter list: {text}")


def kotlin_sig(text: str) -> Sig:
    """'generate(prompt: String, seqLen: Int): Unit'; a leading 'abstract ' marks a must-override."""
    open_, close = _params_span(text)
    params = []
    for p in _split_top(text[open_ + 1:close]):
        name, _, rest = p.partition(":")
        type_, _, default = rest.partition("=")
        params.append(Param(name.strip(), type_.strip(), bool(default.strip())))
    returns = text[close + 1:].lstrip(": ").strip() or "Unit"
    return Sig(text, tuple(params), returns, abstract=text.startswith("abstract "))


def swift_sig(text: str, aliases: dict[str, str]) -> Sig:
    """'func generate(_ prompt: String, tokenCallback: ((String) -> Void)?) throws -> Bool' or 'init(...)'."""
    open_, close = _params_span(text)
    params = []
    for p in _split_top(text[open_ + 1:close]):
        names, _, rest = p.partition(":")
        type_, _, default = rest.partition(" = ")
        bare = type_.strip().rstrip("?").strip("()").rstrip("?")
        closure = "->" in aliases.get(bare, type_)
        params.append(Param(names.split()[0], type_.strip(), bool(default), closure))
    effects, _, returns = text[close + 1:].partition("->")
    return Sig(text, tuple(params), returns.strip() or "Void", "throws" in effects, "async" in effects)


def swift_prop(text: str) -> tuple[str, Prop]:
    """'var name: Type { get }' (read-only), 'let name: Type', 'var name: Type' (settable)."""
    decl, _, accessors = text.partition("{")
    kind, rest = decl.split(None, 1)
    name, _, type_ = rest.partition(":")
    return name.strip(), Prop(type_.strip(), kind == "var" and (not accessors or "set" in accessors))


def _kotlin_type(key: str, spec: dict) -> TypeApi:
    t = TypeApi(key.rsplit(".", 1)[-1], spec["kind"], inits=[kotlin_sig(s) for s in spec.get("constructors", [])])
    for s in spec.get("methods", []):
        t.methods.setdefault(s.removeprefix("abstract ").split("(")[0], []).append(kotlin_sig(s))
    for s in spec.get("constants", []):
        name, _, type_ = s.partition(":")
        t.props[name.strip()] = Prop(type_.strip(), False)
    return t


def _swift_type(key: str, spec: dict, aliases: dict[str, str]) -> TypeApi:
    swift = [lambda e: e["swift"] if isinstance(e, dict) else e][0]  # entries from ObjC carry both spellings
    t = TypeApi(key, spec["kind"], spec["module"], inits=[swift_sig(swift(s), aliases) for s in spec["initializers"]])
    for group, into in (("methods", t.methods), ("static_methods", t.statics)):
        for s in map(swift, spec.get(group, [])):
            into.setdefault(s.split("(")[0].split()[-1], []).append(swift_sig(s, aliases))
    t.props = dict(swift_prop(swift(s)) for s in spec.get("properties", []))
    return t


def load_contract(name: str) -> Contract:
    raw = json.loads((CONTRACT / name).read_text())
    if "classes" in raw:  # Kotlin / Java, keyed by fully qualified name
        types = {key.rsplit(".", 1)[-1]: _kotlin_type(key, spec) for key, spec in raw["classes"].items()}
        return Contract(raw, types, {key: key.rsplit(".", 1)[-1] for key in raw["classes"]}, {})
    types = {key: _swift_type(key, spec, raw.get("typealiases", {})) for key, spec in raw["types"].items()}
    return Contract(raw, types, {}, raw["products"]["modules"])


ANDROID_API = load_contract("executorch_android.json")
APPLE_API = load_contract("executorch_llm_apple.json")
TRANSFORMERS_API = load_contract("swift_transformers.json")


# --- tree-sitter and what both checkers share -------------------------------------------------------
def parser_for(language: str):
    ts = pytest.importorskip("tree_sitter")
    module = pytest.importorskip(f"tree_sitter_{language}")
    return ts.Parser(ts.Language(module.language()))


def walk(node):
    """Every node under `node` in document order (a call before its arguments and closures)."""
    yield node
    for child in node.children:
        yield from walk(child)


def text(node) -> str:
    return node.text.decode()


def named(node, *types: str) -> list:
    return [c for c in node.named_children if not types or c.type in types]


@dataclass
class Resolved:
    """One runtime use the checker matched, with the argument text bound to each parameter ("=" for a write)."""
    type: str
    member: str
    bound: dict[str, str]
    file: str


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    resolved: list[Resolved] = field(default_factory=list)

    def uses(self) -> set[str]:
        return {f"{r.type}.{r.member}" for r in self.resolved}

    def find(self, type_: str, member: str) -> list[Resolved]:
        return [r for r in self.resolved if (r.type, r.member) == (type_, member)]


def _compatible(expected: str, actual: str | None, supertypes: dict[str, set[str]]) -> bool:
    """Whether an argument of type `actual` (None: unknown) may pass for `expected`."""
    want = re.sub(r"<.*>", "", expected).rstrip("?").strip()
    literal = {"null": [], "IntLiteral": ["Int", "Int32", "Int64", "Long", "Float", "Double"],
               "FloatLiteral": ["Float", "Double"]}
    if actual is None:
        return True
    if actual == "null":
        return expected.endswith("?")
    if actual in literal:
        return want in literal[actual]
    if actual == "closure":
        return "->" in expected or want.endswith("Callback")
    return actual == want or want in supertypes.get(actual, set())


class _Checker:
    """The report and a name -> type table (None where two declarations of a name disagree)."""

    def __init__(self, files: dict[str, str], language: str):
        parser = parser_for(language)
        self.trees = {name: parser.parse(src.encode()) for name, src in files.items()}
        self.report = Report([f"{name} does not parse as {language}" for name, tree in self.trees.items()
                              if tree.root_node.has_error])
        self.symbols: dict[str, str | None] = {}

    def fail(self, file: str, node, message: str) -> None:
        self.report.problems.append(f"{file}:{node.start_point[0] + 1}: {message}")

    def resolve(self, type_: str, member: str, bound: dict[str, str], file: str) -> None:
        self.report.resolved.append(Resolved(type_, member, bound, file))

    def bind(self, name: str, type_: str | None) -> None:
        if type_ is not None and self.symbols.get(name, type_) != type_:
            type_ = None
        if type_ is not None or name not in self.symbols:
            self.symbols[name] = type_


# --- Kotlin ---------------------------------------------------------------------------------------
KOTLIN_STATEMENTS = {"block", "statements", "lambda_literal", "class_body", "source_file", "control_structure_body"}


class KotlinChecker(_Checker):
    """Every LlmModule / LlmCallback use in the Android sources against executorch_android.json."""

    def __init__(self, files: dict[str, str], api: Contract):
        super().__init__(files, "kotlin")
        self.api = api
        self.runtime: dict[str, TypeApi] = {}  # imported runtime types by simple name
        self.imported: set[str] = set()
        self.classes: dict[str, set[str]] = {}  # app class -> supertypes
        self.functions: set[str] = set()  # Compose's @Composable functions have capitalized names

    def run(self) -> Report:
        for name, tree in self.trees.items():
            self._imports(name, tree.root_node)
            self._declarations(tree.root_node)
        for _ in range(2):  # a declaration may use a name declared further down
            for tree in self.trees.values():
                self._symbols(tree.root_node)
        for name, tree in self.trees.items():
            for node in walk(tree.root_node):
                self._visit(name, node)
        return self.report

    def _imports(self, file: str, root) -> None:
        for imp in named(root, "import"):
            fqn = text(named(imp, "qualified_identifier")[0])
            self.imported.add(fqn.rsplit(".", 1)[-1])
            if fqn in self.api.fqns:
                self.runtime[self.api.fqns[fqn]] = self.api.types[self.api.fqns[fqn]]
            elif fqn.startswith("org.pytorch."):
                self.fail(file, imp, f"import {fqn} is not in the ExecuTorch {self.api.raw['version']} API "
                                     f"({sorted(self.api.fqns)})")

    def _declarations(self, root) -> None:
        for node in walk(root):
            if node.type == "function_declaration":
                self.functions.add(text(named(node, "identifier")[0]))
            elif node.type == "class_declaration":
                self.classes[text(named(node, "identifier")[0])] = set(self._supertypes(node))

    @staticmethod
    def _supertypes(node) -> list[str]:
        return [re.sub(r"<.*>", "", text(u)) for s in named(node, "delegation_specifiers") for u in walk(s)
                if u.type == "user_type"]

    def _symbols(self, root) -> None:
        for node in walk(root):
            if node.type == "property_declaration":
                decl = named(node, "variable_declaration")[0]
                declared = named(decl, "user_type", "nullable_type")
                value = [c for c in named(node) if c.type not in ("modifiers", "variable_declaration")]
                type_ = text(declared[0]).rstrip("?") if declared else self.expr_type(value[0]) if value else None
                self.bind(text(named(decl, "identifier")[0]), type_)
            elif node.type in ("class_parameter", "parameter"):
                ids, types = named(node, "identifier"), named(node, "user_type", "nullable_type")
                if ids and types:
                    self.bind(text(ids[0]), re.sub(r"<.*>", "", text(types[0])).rstrip("?"))

    def expr_type(self, node) -> str | None:
        """The type a literal, a declared name, an object literal or a constructor call has; else None."""
        t = text(node)
        if node.type in ("string_literal", "number_literal", "float_literal"):
            if node.type == "float_literal":
                return "Float" if t.endswith(("f", "F")) else "Double"
            return {"string_literal": "String", "number_literal": "Long" if t.endswith("L") else "Int"}[node.type]
        if node.type == "identifier":
            return {"true": "Boolean", "false": "Boolean", "null": "null"}.get(t, self.symbols.get(t))
        if node.type == "object_literal":
            return (self._supertypes(node) or [None])[0]
        if node.type == "call_expression" and named(node)[0].type == "identifier":
            name = text(named(node)[0])
            return name if name in self.classes or name in self.runtime else None
        return None

    def _visit(self, file: str, node) -> None:
        if node.type == "call_expression":
            self._call(file, node)
        elif node.type == "navigation_expression":
            self._member(file, node)
        elif node.type in ("class_declaration", "object_literal"):
            self._overrides(file, node)
        if node.type == "user_type" or node.type == "call_expression" and named(node)[0].type == "identifier":
            self._known_name(file, named(node)[0])

    def _known_name(self, file: str, ident) -> None:
        name = text(ident)
        known = self.classes.keys() | self.functions | self.imported | set(PLATFORM["kotlin"]["default_imports"])
        if name[:1].isupper() and not name.isupper() and name not in known:
            self.fail(file, ident, f"unknown type {name} (not declared, imported, nor a Kotlin default import "
                                   "in platform_names.json)")

    def _call_parts(self, node):
        """(callee, [(name or None, value node)]); a trailing lambda is a last positional argument."""
        children = named(node)
        callee, args = children[0], []
        if callee.type == "call_expression":  # `f(x) { ... }` nests the call inside the lambda's call
            callee, args = self._call_parts(callee)
        for part in children[1:]:
            for arg in named(part, "value_argument"):
                is_named = any(not c.is_named and text(c) == "=" for c in arg.children)
                args.append((text(named(arg)[0]) if is_named else None, named(arg)[-1]))
            if part.type == "annotated_lambda":
                args.append((None, part))
        return callee, args

    def _target(self, callee) -> tuple[TypeApi | None, str, bool]:
        """(runtime type, member, whether reached through the class name) of a callee or navigation."""
        if callee.type == "identifier" and text(callee) in self.runtime:
            return self.runtime[text(callee)], "<init>", True
        if callee.type != "navigation_expression" or named(callee)[0].type != "identifier":
            return None, "", False
        target, member = text(named(callee)[0]), text(named(callee)[-1])
        if target in self.runtime:
            return self.runtime[target], member, True
        type_ = self.symbols.get(target)
        return (self.runtime[type_], member, False) if type_ in self.runtime else (None, member, False)

    def _call(self, file: str, node) -> None:
        if node.parent.type == "call_expression" and named(node.parent)[0] == node:
            return  # the inner half of `f(x) { ... }`, checked with its outer node
        callee, args = self._call_parts(node)
        api, member, static = self._target(callee)
        if api is None:
            return
        sigs = api.inits if member == "<init>" else [] if static else api.methods.get(member, [])
        shown = f"{api.name}{'' if member == '<init>' else '.' + member}({', '.join(text(v) for _, v in args)})"
        if not sigs:
            return self.fail(file, node, f"{api.name} has no method '{member}' in ExecuTorch "
                                         f"{self.api.raw['version']} ({shown})")
        matches = [(s, b) for s in sigs if (b := self._bind_args(s, args)) is not None]
        if not matches:
            return self.fail(file, node, f"{shown} matches no overload: {'; '.join(s.text for s in sigs)}")
        if member != "<init>" and all(s.returns == "Unit" for s, _ in matches) and self._value_used(node):
            self.fail(file, node, f"{shown} returns Unit, but its value is used")
        self.resolve(api.name, member, matches[0][1], file)

    def _bind_args(self, sig: Sig, args) -> dict[str, str] | None:
        """Parameter name -> argument text, or None when these arguments cannot call `sig`."""
        bound, params = {}, list(sig.params)
        for i, (name, value) in enumerate(args):
            p = params[i] if name is None and i < len(params) else next((q for q in params if q.label == name), None)
            actual = "closure" if value.type == "annotated_lambda" else self.expr_type(value)
            if p is None or p.label in bound or not _compatible(p.type, actual, self.classes):
                return None
            bound[p.label] = text(value)
        return bound if all(p.label in bound or p.default for p in params) else None

    def _value_used(self, node) -> bool:
        parent = node.parent
        if parent.type in KOTLIN_STATEMENTS:
            return False
        if parent.type == "if_expression" and parent.child_by_field_name("condition") != node:
            return self._value_used(parent)  # a branch's value is used only where the `if`'s is
        if parent.type == "function_body":  # `fun f(): T = call()` uses it; `fun f() = call()` returns Unit
            declared = [c for c in named(parent.parent) if c.type in ("user_type", "nullable_type")]
            return bool(declared) and text(declared[0]) != "Unit"
        return True

    def _member(self, file: str, node) -> None:
        if node.parent.type in ("call_expression", "import") and named(node.parent)[0] == node:
            return
        api, member, _ = self._target(node)
        if api is not None and member not in api.props:
            self.fail(file, node, f"{api.name} has no property or constant '{member}'")
        elif api is not None:
            self.resolve(api.name, member, {}, file)

    def _overrides(self, file: str, node) -> None:
        supers = self._supertypes(node)
        interfaces = [self.runtime[s] for s in supers if s in self.runtime and self.runtime[s].kind == "interface"]
        body = named(node, "class_body")
        if not interfaces or not body:
            return
        overridden = set()
        for fn in named(body[0], "function_declaration"):
            if not any("override" in text(m) for m in named(fn, "modifiers")):
                continue
            name = text(named(fn, "identifier")[0])
            arity = len(named(named(fn, "function_value_parameters")[0], "parameter"))
            owner = next((i for i in interfaces if any(len(s.params) == arity for s in i.methods.get(name, []))), None)
            if owner is not None:
                overridden.add(name)
                self.resolve(owner.name, name, {}, file)
            elif len(interfaces) == len(supers):  # nothing else it could override
                self.fail(file, fn, f"override fun {name} with {arity} parameters is not in "
                                    f"{', '.join(i.name for i in interfaces)}")
        for api in interfaces:
            for name in [n for n, sigs in api.methods.items() if any(s.abstract for s in sigs)]:
                if name not in overridden:
                    self.fail(file, node, f"implements {api.name} without {name}")


def check_kotlin(files: dict[str, str]) -> Report:
    return KotlinChecker(files, ANDROID_API).run()


# --- Swift ------------------------------------------------------------------------------------------
SWIFT_SCALARS = {"Int", "Float", "Double", "String", "Bool"}
SWIFT_STATEMENT_BOUNDARIES = {"statements", "function_body", "lambda_literal", "class_body", "source_file"}


class SwiftChecker(_Checker):
    """Every runtime use in the iOS sources against the ExecuTorchLLM and swift-transformers contracts."""

    def __init__(self, files: dict[str, str], apis: list[Contract], linked: dict[str, list[str]]):
        super().__init__(files, "swift")
        self.apis = {name: t for api in apis for name, t in api.types.items()}
        self.importable = set(PLATFORM["swift"]["sdk_modules"])
        for api in apis:
            for product in linked.get(api.raw["pin"]["package"], []):
                self.importable |= set(api.modules.get(product, []))
        self.declared: dict[str, set[str]] = {}  # app type -> conformances (extensions included)
        self.dollar_zero: dict[tuple[int, int], str] = {}  # a trailing closure's span -> the type of its $0

    def run(self) -> Report:
        for tree in self.trees.values():
            for node in walk(tree.root_node):
                names = named(node, "type_identifier", "user_type")
                if node.type in ("class_declaration", "protocol_declaration") and names:
                    supers = {text(u) for s in named(node, "inheritance_specifier") for u in named(s)}
                    self.declared.setdefault(text(names[0]), set()).update(supers)
        for _ in range(2):
            for tree in self.trees.values():
                self._symbols(tree.root_node)
        for name, tree in self.trees.items():
            visible = self._imports(name, tree.root_node)
            for node in walk(tree.root_node):
                self._visit(name, node, visible)
        return self.report

    def _imports(self, file: str, root) -> set[str]:
        """Checks the file's imports; returns the runtime types they make visible."""
        modules = {text(named(imp)[0]) for imp in named(root, "import_declaration")}
        for imp in named(root, "import_declaration"):
            if text(named(imp)[0]) not in self.importable:
                self.fail(file, imp, f"import {text(named(imp)[0])} is neither an SDK module nor a module of a "
                                     f"product project.yml links ({sorted(self.importable)})")
        return {name for name, t in self.apis.items() if t.module in modules}

    def _symbols(self, root) -> None:
        for node in walk(root):
            if node.type == "property_declaration" and node.child_by_field_name("name") is not None:
                annotation, value = named(node, "type_annotation"), node.child_by_field_name("value")
                type_ = (text(annotation[0]).lstrip(":").strip().rstrip("?") if annotation
                         else self.expr_type(value) if value is not None else None)
                self.bind(text(node.child_by_field_name("name")), type_)
            elif node.type == "parameter":
                ids, types = named(node, "simple_identifier"), named(node, "user_type", "optional_type")
                if ids and types:
                    self.bind(text(ids[-1]), text(types[0]).rstrip("?"))

    @staticmethod
    def _nav(node):
        """(target node, member name) of `a.b`."""
        suffix = node.child_by_field_name("suffix")
        member = suffix.child_by_field_name("suffix") if suffix is not None else None
        return node.child_by_field_name("target"), text(member) if member is not None else ""

    def expr_type(self, node) -> str | None:
        """The type a literal, a declared name, `$0`, an initializer, a runtime member or an app constant has."""
        literal = {"line_string_literal": "String", "integer_literal": "IntLiteral", "real_literal": "FloatLiteral",
                   "boolean_literal": "Bool"}
        if node.type in literal:
            return literal[node.type]
        if node.type in ("try_expression", "await_expression"):
            return self.expr_type(node.child_by_field_name("expr"))
        if node.type == "simple_identifier":
            return self._type_of_dollar_zero(node) if text(node) == "$0" else self.symbols.get(text(node))
        if node.type == "call_expression":
            callee = named(node)[0]
            if callee.type == "simple_identifier" and text(callee) in {*self.apis, *self.declared, *SWIFT_SCALARS}:
                return text(callee)  # an initializer: Float(x), GenerationConfig(...)
            api, member, static = self._target(callee)
            sigs = (api.statics if static else api.methods).get(member, []) if api else []
            return sigs[0].returns if sigs else None
        if node.type == "navigation_expression":
            api, member, _ = self._target(node)
            return api.props[member].type if api is not None and member in api.props else self._app_constant(node)
        return None

    def _app_constant(self, node) -> str | None:
        """`AppSettings.x`: the type its `static let x = literal` gives it (Int, Double, Bool, String)."""
        target, member = self._nav(node)
        for tree in self.trees.values():
            for decl in walk(tree.root_node):
                if decl.type == "class_declaration" and target is not None \
                        and text(named(decl, "type_identifier", "user_type")[0]) == text(target):
                    for prop in named(named(decl)[-1], "property_declaration"):
                        if text(prop.child_by_field_name("name")) == member and prop.child_by_field_name("value"):
                            found = self.expr_type(prop.child_by_field_name("value"))
                            return {"IntLiteral": "Int", "FloatLiteral": "Double"}.get(found, found)
        return None

    def _type_of_dollar_zero(self, node) -> str | None:
        while node is not None:
            if node.type == "lambda_literal" and (node.start_byte, node.end_byte) in self.dollar_zero:
                return self.dollar_zero[(node.start_byte, node.end_byte)]
            node = node.parent
        return None

    def _target(self, callee) -> tuple[TypeApi | None, str, bool]:
        """(runtime type, member, whether reached through the type name) of a callee or navigation."""
        if callee.type == "simple_identifier" and text(callee) in self.apis:
            return self.apis[text(callee)], "init", True
        if callee.type != "navigation_expression":
            return None, "", False
        target, member = self._nav(callee)
        type_ = None
        if target is not None and target.type == "navigation_expression":  # `self.x.member`: x's type
            inner, name = self._nav(target)
            type_ = self.symbols.get(name) if inner is not None and text(inner) == "self" else None
        elif target is not None and target.type == "simple_identifier":
            if text(target) in self.apis:
                return self.apis[text(target)], member, True
            type_ = self.expr_type(target)
        return (self.apis[type_], member, False) if type_ in self.apis else (None, member, False)

    def _visit(self, file: str, node, visible: set[str]) -> None:
        if node.type == "call_expression":
            self._call(file, node)
        elif node.type == "navigation_expression":
            self._member(file, node)
        if node.type == "type_identifier":
            self._known_name(file, node, visible)
        elif node.type == "call_expression" and named(node)[0].type == "simple_identifier":
            self._known_name(file, named(node)[0], visible)
        elif node.type == "navigation_expression" and node.child_by_field_name("target") is not None \
                and node.child_by_field_name("target").type == "simple_identifier":
            self._known_name(file, node.child_by_field_name("target"), visible)

    def _known_name(self, file: str, ident, visible: set[str]) -> None:
        name = text(ident)
        if not name[:1].isupper():
            return
        if name in self.apis and name not in visible:
            self.fail(file, ident, f"{name} is used without importing {self.apis[name].module}")
        elif name not in self.apis and name not in self.declared and name not in PLATFORM["swift"]["names"]:
            self.fail(file, ident, f"unknown type {name} (not declared in the app, not in a pinned runtime, "
                                   "not in platform_names.json)")

    def _call(self, file: str, node) -> None:
        api, member, static = self._target(named(node)[0])
        if api is None:
            return
        suffix = named(node, "call_suffix")
        args = [(a.child_by_field_name("name"), a.child_by_field_name("value"))
                for s in suffix for v in named(s, "value_arguments") for a in named(v, "value_argument")]
        labels = [text(n) if n is not None else "_" for n, _ in args]
        closures = [c for s in suffix for c in named(s, "lambda_literal")]
        sigs = api.inits if member == "init" else (api.statics if static else api.methods).get(member, [])
        shown = f"{api.name}{'' if member == 'init' else '.' + member}({''.join(f'{label}:' for label in labels)})"
        if not sigs:
            kind = "initializer" if member == "init" else "static function" if static else "method"
            return self.fail(file, node, f"{api.name} has no {kind} '{member}' ({shown})")
        matches = [(s, b) for s in sigs if (b := self._bind_args(s, labels, args, closures)) is not None]
        if not matches:
            return self.fail(file, node, f"{shown} with {len(closures)} trailing closure(s) matches no declaration: "
                                         f"{'; '.join(s.text for s in sigs)}")
        sig, bound = matches[0]
        for effect, needed, wrapper in (("throws", sig.throws, "try"), ("async", sig.is_async, "await")):
            if needed and not self._inside(node, f"{wrapper}_expression"):
                self.fail(file, node, f"{shown} {effect}, but is called without {wrapper}")
        self.resolve(api.name, member, bound, file)

    def _bind_args(self, sig: Sig, labels, args, closures) -> dict[str, str] | None:
        """Swift's rule: labelled arguments in declaration order, skipping only defaulted parameters; then each
        trailing closure takes the next closure parameter."""
        bound, i, params = {}, 0, sig.params
        for label, (_, value) in zip(labels, args):
            while i < len(params) and params[i].label != label and params[i].default:
                i += 1
            if i == len(params) or params[i].label != label \
                    or not _compatible(params[i].type, self.expr_type(value), self.declared):
                return None
            bound[params[i].label], i = text(value), i + 1
        for closure in closures:
            while i < len(params) and not params[i].closure and params[i].default:
                i += 1
            if i == len(params) or not params[i].closure:
                return None
            bound[params[i].label], i = text(closure), i + 1
            first = params[i - 1].type.lstrip("(").split(")")[0].split(",")[0].strip()
            if first in self.apis:  # `Config { $0.x = ... }`: $0 is a Config inside that closure
                self.dollar_zero[(closure.start_byte, closure.end_byte)] = first
        return bound if all(p.default for p in params[i:]) else None

    @staticmethod
    def _inside(node, wrapper: str) -> bool:
        """Whether `try` / `await` covers `node` (it reaches to the end of its statement)."""
        node = node.parent
        while node is not None and node.type not in SWIFT_STATEMENT_BOUNDARIES:
            if node.type == wrapper:
                return True
            node = node.parent
        return False

    def _member(self, file: str, node) -> None:
        parent = node.parent
        api, member, _ = self._target(node)
        if api is None or parent.type == "call_expression" and named(parent)[0] == node:
            return
        if member not in api.props:
            return self.fail(file, node, f"{api.name} has no property '{member}'")
        if parent.type != "directly_assignable_expression":
            return self.resolve(api.name, member, {}, file)
        value, prop = parent.parent.child_by_field_name("result"), api.props[member]
        if not prop.settable:
            self.fail(file, node, f"{api.name}.{member} is read-only")
        elif not _compatible(prop.type, self.expr_type(value), self.declared):
            self.fail(file, node, f"{api.name}.{member} is {prop.type}, assigned {text(value)} "
                                  f"({self.expr_type(value)})")
        self.resolve(api.name, member, {"=": text(value)}, file)


def check_swift(files: dict[str, str], project_yml: str) -> Report:
    return SwiftChecker(files, [APPLE_API, TRANSFORMERS_API], project_products(project_yml)).run()


# --- pins -------------------------------------------------------------------------------------------
def project_packages(yml: str) -> dict[str, dict[str, str]]:
    """project.yml's `packages:` block as {name: {key: value}} (XcodeGen's two-level layout)."""
    packages, current, inside = {}, None, False
    for line in yml.splitlines():
        indent = len(line) - len(line.lstrip())
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if indent == 0:
            inside = line.startswith("packages:")
        elif inside and indent == 2:
            current = packages.setdefault(line.strip().rstrip(":"), {})
        elif inside and indent == 4 and current is not None:
            key, _, value = line.strip().partition(":")
            current[key] = value.strip().strip('"')
    return packages


def project_products(yml: str) -> dict[str, list[str]]:
    """Package name -> the products the app target links."""
    out: dict[str, list[str]] = {}
    for package, product in re.findall(r"- package: (\S+)\s+product: (\S+)", yml):
        out.setdefault(package, []).append(product)
    return out


def check_ios_pins(yml: str) -> list[str]:
    problems, packages, linked = [], project_packages(yml), project_products(yml)
    for api in (APPLE_API, TRANSFORMERS_API):
        pin, version = api.raw["pin"], api.raw["version"]
        spec = packages.get(pin["package"], {})
        if spec.get(pin["key"]) != version:
            problems.append(f"project.yml pins {pin['package']} as {spec}, the contract is {pin['key']}: {version}")
        problems += [f"project.yml links {pin['package']} product {p}, which it does not have ({sorted(api.modules)})"
                     for p in linked.get(pin["package"], []) if p not in api.modules]
    return problems


def check_android_pins(toml: str, gradle: str) -> list[str]:
    problems, libs, pin = [], tomllib.loads(toml), ANDROID_API.raw["pin"]
    lib = libs["libraries"].get(pin["library"], {})
    version = libs["versions"].get(lib.get("version", {}).get("ref", ""), lib.get("version"))
    want = f"{pin['group']}:{pin['name']}:{ANDROID_API.raw['version']}"
    if f"{lib.get('group')}:{lib.get('name')}:{version}" != want:
        problems.append(f"libs.versions.toml has {pin['library']} = {lib} at {version}, the contract {want}")
    if any("fbjni" in key for key in [*libs["versions"], *libs["libraries"]]) or "fbjni" in gradle:
        problems.append("the app pins fbjni, which the ExecuTorch AAR brings itself (a lower pin has no effect)")
    if "libs.executorch.android" not in gradle:
        problems.append("app/build.gradle.kts does not depend on libs.executorch.android")
    return problems
