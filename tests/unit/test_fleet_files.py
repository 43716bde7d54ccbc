"""The fleet files (ci/, docs/fleet.md) are valid for their tools, as far as can be told offline.

GitLab CI: PyYAML parses it; its structure is checked (host jobs pinned, locked, uploading their
run always; `qualify` after every host job, merging and comparing); with check-jsonschema
installed, GitLab's schema as vendored there validates it; bash parses every script line.
Jenkinsfile: a declarative pipeline whose blocks are read from the file (strings and comments
skipped, brackets balanced) and checked against the declarative matrix rules; with `groovy`
installed (Debian's, the Groovy 2.4 Jenkins runs), the file is also parsed by Groovy itself and
its blocks compared with ours. systemd units: `systemd-analyze verify`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CI = ROOT / "ci"
#: Root's own copy of .ci/check-root-tree, run before make reads a checkout (docs/fleet.md).
ROOT_CHECK = "/usr/local/libexec/hotplug-harness/check-root-tree"


# --- GitLab CI ---------------------------------------------------------------------------------

def _gitlab() -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (pip install pyyaml)")
    return yaml.safe_load((CI / "gitlab-ci.yml").read_text())


def _jobs(doc: dict) -> dict[str, dict]:
    reserved = {"stages", "variables", "default", "include", "workflow", "image", "services",
                "cache", "before_script", "after_script"}
    return {k: v for k, v in doc.items() if k not in reserved and not k.startswith(".")}


def _host_jobs(doc: dict) -> dict[str, dict]:
    return {k: v for k, v in _jobs(doc).items() if "HOST" in _matrix_vars(v)}


def _matrix_vars(job: dict) -> dict[str, list]:
    parallel = job.get("parallel")
    out: dict[str, list] = {}
    for entry in parallel.get("matrix", []) if isinstance(parallel, dict) else []:
        for k, v in entry.items():
            out.setdefault(k, []).extend(v if isinstance(v, list) else [v])
    return out


def _seconds(text: str) -> int:
    parts = re.findall(r"(\d+)\s*([hms])", text)
    assert parts and "".join(n + u for n, u in parts) == re.sub(r"\s", "", text), text
    return sum(int(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def _scripts(job: dict) -> list:
    return [line for key in ("before_script", "script", "after_script") for line in job.get(key, [])]


def test_gitlab_host_jobs_are_pinned_locked_and_upload_their_run_always():
    doc = _gitlab()
    hosts = _host_jobs(doc)
    assert hosts, "no job with a parallel:matrix over HOST"
    for name, job in hosts.items():
        values = _matrix_vars(job)["HOST"]
        assert len(values) >= 2, f"{name}: merge needs two runs or more"
        assert any("$HOST" in t or "${HOST}" in t for t in job["tags"]), f"{name}: tags not per host"
        assert "$HOST" in job["resource_group"] or "${HOST}" in job["resource_group"], name
        assert re.fullmatch(r"[\w\-/${}. ]+", job["resource_group"]), "characters GitLab refuses"
        art = job["artifacts"]
        assert art["when"] == "always", name
        assert any(p.startswith("reports/run-") for p in art["paths"]), name
        assert art.get("expire_in"), name
        assert any("make nightly" in s for s in job["script"]), name
        assert any("harness restore" in s for s in job["after_script"]), name
        # after_script must still get its turn when the script times out
        v = job["variables"]
        assert (_seconds(v["RUNNER_SCRIPT_TIMEOUT"]) + _seconds(v["RUNNER_AFTER_SCRIPT_TIMEOUT"])
                < _seconds(job["timeout"])), name
        assert "reports" not in v.get("GIT_CLEAN_FLAGS", ""), "reports/ must be cleaned per job"


def test_gitlab_qualify_needs_every_host_job_and_merges_then_compares():
    doc = _gitlab()
    jobs, hosts = _jobs(doc), _host_jobs(doc)
    qualify = [(n, j) for n, j in jobs.items() if any("harness merge" in s for s in j["script"])]
    assert len(qualify) == 1
    name, job = qualify[0]
    needs = [n if isinstance(n, str) else n["job"] for n in job["needs"]]
    assert set(hosts) <= set(needs)
    assert job["when"] == "always"
    assert doc["stages"].index(job["stage"]) > max(doc["stages"].index(h["stage"]) for h in hosts.values())
    script = "\n".join(job["script"])
    assert "--axis host" in script
    assert "harness compare" in script
    assert script.index("harness merge") < script.index("harness compare")
    # the baseline is this same job's artifacts, from the release's ref
    assert f"/jobs/artifacts/$BASELINE_REF/download?job={name}" in script
    assert job["artifacts"]["when"] == "always"
    assert any(p.startswith("qualification") for p in job["artifacts"]["paths"])


def test_gitlab_every_job_is_in_a_stage_and_every_script_line_is_a_string_bash_parses():
    doc = _gitlab()
    for name, job in _jobs(doc).items():
        assert job["stage"] in doc["stages"], name
        for line in _scripts(job):
            assert isinstance(line, str), f"{name}: {line!r} is not a string (quote it)"
            r = subprocess.run(["bash", "-n", "-c", line], capture_output=True, text=True)
            assert r.returncode == 0, f"{name}: {line!r}: {r.stderr}"


def test_gitlab_file_against_gitlabs_schema():
    doc = _gitlab()
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed")
    from importlib.resources import files
    try:
        path = files("check_jsonschema") / "builtin_schemas" / "vendor" / "gitlab-ci.json"
        schema = json.loads(path.read_text())
    except (ImportError, FileNotFoundError):
        pytest.skip("no GitLab CI schema offline: pip install check-jsonschema (vendors it)")
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: str(list(e.path)))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message[:300]}" for e in errors)


def _rules(doc: dict, job: dict) -> list:
    """A job's rules, its own or from the hidden jobs it extends."""
    if "rules" in job:
        return job["rules"]
    bases = job.get("extends", [])
    for base in [bases] if isinstance(bases, str) else bases:
        if "rules" in doc[base]:
            return doc[base]["rules"]
    return []


def test_gitlab_root_jobs_run_only_for_protected_branches_never_for_merge_requests():
    """Issue 31, item 13: without rules, every branch and merge request ran its pushed code as
    root on the VT-d runners."""
    doc = _gitlab()
    for name, job in list(_host_jobs(doc).items()) + [("qualify", _jobs(doc)["qualify"])]:
        rules = _rules(doc, job)
        assert rules, f"{name}: no rules: every pipeline would run it"
        assert rules[-1] == {"when": "never"}, f"{name}: the last rule must refuse the rest"
        for rule in rules[:-1]:
            cond = rule["if"]
            assert '$CI_COMMIT_REF_PROTECTED == "true" &&' in cond, f"{name}: {cond}"
            sources = re.search(r"\$CI_PIPELINE_SOURCE =~ /\^\((.*)\)\$/", cond)
            assert sources and "schedule" in sources[1].split("|"), cond
            assert not {"merge_request_event", "external_pull_request_event", "trigger",
                        "pipeline", "api"} & set(sources[1].split("|")), cond


def test_gitlab_host_jobs_run_nothing_as_root_without_the_protected_grant():
    """The rules are in the branch's own file: the protected variable GitLab gives only to
    protected refs is what a copy of the job, or an edited one, lacks."""
    doc = _gitlab()
    for name, job in _host_jobs(doc).items():
        script = job["script"]
        grant = next(i for i, s in enumerate(script) if 'test -n "${HH_ROOT_GRANT:-}"' in s)
        assert grant < next(i for i, s in enumerate(script) if "make nightly" in s), name
        assert grant < next(i for i, s in enumerate(script) if "id -u" in s), name
        assert all('[ -n "${HH_ROOT_GRANT:-}" ] &&' in s for s in job["after_script"]
                   if ".venv/bin/python" in s), name
    assert "`HH_ROOT_GRANT`" in (ROOT / "docs" / "fleet.md").read_text()


def test_gitlab_host_jobs_rebuild_their_venv_and_upload_no_private_key():
    doc = _gitlab()
    for name, job in _host_jobs(doc).items():
        assert "/.venv" not in job["variables"].get("GIT_CLEAN_FLAGS", ""), \
            f"{name}: a kept .venv lets one job poison the next one's root run"
        script = job["script"]
        assert script.index("rm -rf .venv") < next(i for i, s in enumerate(script)
                                                   if "make nightly" in s), name
        excluded = job["artifacts"].get("exclude", [])
        assert "reports/run-*/cloud-init/**" in excluded and "reports/**/id_*" in excluded, name


def test_every_root_job_checks_the_checkout_with_roots_own_copy_before_make_reads_it():
    """Third adversarial read: `make nightly`'s own check runs after make has read the
    checkout's makefiles (a GNUmakefile first). Each CI file runs root's installed copy first,
    and again before the give-back that runs the checkout's .venv."""
    for name, job in _host_jobs(_gitlab()).items():
        script = job["script"]
        check = script.index(f"{ROOT_CHECK} .")
        assert check < next(i for i, s in enumerate(script) if "make nightly" in s), name
        assert all(f"&& {ROOT_CHECK} .;" in s for s in job["after_script"]
                   if ".venv/bin/python" in s), name
    jenkins = (CI / "Jenkinsfile").read_text()
    assert jenkins.index(f"{ROOT_CHECK} .\n") < jenkins.index("make nightly")
    assert f"&& {ROOT_CHECK} .; then .venv/bin/python" in jenkins
    assert f"install -D -o root -g root -m 0755 .ci/check-root-tree {ROOT_CHECK}" in \
        (ROOT / "docs" / "fleet.md").read_text()


# --- Jenkinsfile -------------------------------------------------------------------------------

CONTROL = {"if", "else", "for", "while", "try", "catch", "finally", "switch"}
# What a declarative `matrix` may hold (jenkins.io, Pipeline Syntax, "Matrix").
MATRIX_KEYS = {"axes", "excludes", "stages", "agent", "environment", "input", "options", "post",
               "tools", "when"}


class Block:
    def __init__(self, label: str, control: bool = False):
        self.label, self.control, self.children, self.text = label, control, [], ""

    def child(self, label: str) -> "Block":
        found = [c for c in self.children if c.label == label]
        assert len(found) == 1, f"{self.label}: {len(found)} blocks {label!r} in {[c.label for c in self.children]}"
        return found[0]

    def paths(self, prefix: str = "") -> list[str]:
        """Every block below, as a path of labels, in file order (as Groovy walks them)."""
        out = []
        for c in self.children:
            p = f"{prefix}/{c.label}" if prefix else c.label
            out += [p, *c.paths(p)]
        return out


def _label(header: str) -> tuple[str, bool]:
    m = re.fullmatch(r"(\w+)\s*(?:\((.*)\))?", header.strip(), re.S)
    if not m or m.group(1) in CONTROL:
        return header.strip(), True
    name, args = m.group(1), m.group(2) or ""
    first = re.match(r"\s*'([^']*)'", args)
    return (f"{name}({first.group(1)})" if name == "stage" and first else name), False


def _in_parens(stack: list) -> bool:
    """Whether the innermost open bracket is a ( or [: a header spanning lines goes on."""
    return bool(stack) and stack[-1][0] != "{"


def parse_groovy_blocks(text: str) -> Block:
    """The `name(...) { ... }` blocks of a Groovy file, strings and comments skipped. Raises
    ValueError on an unclosed string or comment and on unbalanced brackets. The blocks of
    control statements (if, for, try, ...) are checked but left out of the tree."""
    root = Block("")
    stack: list[tuple[str, int, Block | None, int]] = []  # bracket, line, block, text start
    header, i, line, n = "", 0, 1, len(text)
    current = [root]
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            if j < 0:
                raise ValueError(f"line {line}: comment never closed")
            line += text.count("\n", i, j)
            i = j + 2
            continue
        for quote in ("'''", '"""', "'", '"'):
            if text.startswith(quote, i):
                j = i + len(quote)
                while True:
                    if j >= n or (len(quote) == 1 and text[j] == "\n"):
                        raise ValueError(f"line {line}: string never closed")
                    if text[j] == "\\":
                        j += 2
                        continue
                    if text.startswith(quote, j):
                        break
                    j += 1
                header += "'" + text[i + len(quote):j] + "'"
                line += text.count("\n", i, j)
                i = j + len(quote)
                break
        else:
            if c in "([{":
                if c == "{":
                    label, control = _label(header)
                    block = Block(label, control)
                    if not control and not current[-1].control:
                        current[-1].children.append(block)
                    current.append(block)
                    stack.append((c, line, block, i + 1))
                    header = ""
                else:
                    stack.append((c, line, None, i))
                    header += c
            elif c in ")]}":
                if not stack or {"(": ")", "[": "]", "{": "}"}[stack[-1][0]] != c:
                    raise ValueError(f"line {line}: {c!r} closes nothing")
                opened, _, block, start = stack.pop()
                if block is not None:
                    block.text = text[start:i]
                    current.pop()
                    header = ""
                else:
                    header += c
            elif c == ";" or (c == "\n" and not _in_parens(stack)):
                header = ""
            else:
                header += c
            if c == "\n":
                line += 1
            i += 1
    if stack:
        raise ValueError(f"line {stack[-1][1]}: {stack[-1][0]!r} never closed")
    return root


def _jenkinsfile() -> tuple[str, Block]:
    text = (CI / "Jenkinsfile").read_text()
    return text, parse_groovy_blocks(text)


def test_block_parser_catches_what_it_should():
    assert parse_groovy_blocks("a { b('x') { c { } } }").paths() == ["a", "a/b", "a/b/c"]
    assert parse_groovy_blocks("stage('x { y') { sh 'a } b' } // }").paths() == ["stage(x { y)"]
    assert parse_groovy_blocks("a { if (x) { b { } } else { c { } } }").paths() == ["a"]
    assert parse_groovy_blocks("a(x,\n y) { b { } }; c { }").paths() == ["a", "a/b", "c"]
    for bad in ("a { b ", "a { b } }", "a { sh 'x }", "a ( ] ", "/* a {"):
        with pytest.raises(ValueError):
            parse_groovy_blocks(bad)


def test_jenkinsfile_is_one_declarative_pipeline():
    text, root = _jenkinsfile()
    code = re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.S).strip()
    assert code.startswith("pipeline {") and code.endswith("}")
    assert [c.label for c in root.children] == ["pipeline"]
    pipeline = root.child("pipeline")
    stages = pipeline.child("stages")
    for stage in (c for c in stages.paths() if c.rsplit("/", 1)[-1].startswith("stage(")):
        node = stages
        for part in stage.split("/"):
            node = node.child(part)
        kinds = [c.label for c in node.children if c.label in ("steps", "stages", "parallel", "matrix")]
        assert len(kinds) == 1, f"{stage}: a stage has one of steps, stages, parallel, matrix: {kinds}"


def test_jenkinsfile_matrix_per_host_with_agent_lock_junit_archive():
    text, root = _jenkinsfile()
    stages = root.child("pipeline").child("stages")
    matrix_stage = [s for s in stages.children if any(c.label == "matrix" for c in s.children)]
    assert len(matrix_stage) == 1
    matrix = matrix_stage[0].child("matrix")
    keys = {c.label for c in matrix.children}
    assert {"axes", "stages"} <= keys <= MATRIX_KEYS, keys
    axis = matrix.child("axes").child("axis")
    assert re.search(r"name\s+'HOST'", axis.text)
    assert re.search(r'label\s+"\$\{HOST\}"', matrix.child("agent").text)
    assert re.search(r'lock\(resource:\s*"vtd-\$\{HOST\}"\)', matrix.child("options").text)
    cell = matrix.child("stages")
    body = "".join(s.text for s in cell.children)
    assert "make nightly" in body
    post = [s.child("post").child("always") for s in cell.children if any(c.label == "post" for c in s.children)]
    assert post, "the host stage needs post { always { ... } }"
    always = post[0].text
    for step in ("harness restore", "junit", "archiveArtifacts", "stash"):
        assert step in always, f"post always lacks {step}"
    assert re.search(r"junit\b.*junit\.xml", always)


def test_jenkinsfile_qualify_after_the_matrix_merges_and_compares_every_host():
    text, root = _jenkinsfile()
    stages = root.child("pipeline").child("stages").children
    labels = [s.label for s in stages]
    i = next(k for k, s in enumerate(stages) if any(c.label == "matrix" for c in s.children))
    after = stages[i + 1:]
    assert after, f"no stage after the matrix: {labels}"
    steps = after[0].child("steps").text
    assert "unstash" in steps
    assert steps.index("harness merge") < steps.index("harness compare")
    assert "--axis host" in steps
    axis_text = stages[i].child("matrix").child("axes").child("axis").text
    axis_values = re.findall(r"'([^']*)'", re.search(r"values\s+(.*)", axis_text).group(1))
    listed = re.search(r"for \(\w+ in \[([^\]]*)\]\)", steps)
    assert listed, "qualify must list the hosts to unstash"
    assert re.findall(r"'([^']*)'", listed.group(1)) == axis_values, "host lists differ"


GROOVY_OUTLINE = r"""
import org.codehaus.groovy.ast.expr.*
import org.codehaus.groovy.ast.stmt.*
import org.codehaus.groovy.control.CompilationUnit
import org.codehaus.groovy.control.Phases

def unit = new CompilationUnit()
unit.addSource(new File(args[0]))
unit.compile(Phases.CONVERSION)
def walk
walk = { Statement st, String path ->
    if (st instanceof BlockStatement) { st.statements.each { walk(it, path) }; return }
    if (!(st instanceof ExpressionStatement) || !(st.expression instanceof MethodCallExpression)) return
    MethodCallExpression call = st.expression
    def args = call.arguments instanceof TupleExpression ? call.arguments.expressions : [call.arguments]
    def closures = args.findAll { it instanceof ClosureExpression }
    if (!closures) return
    def label = call.methodAsString
    if (label == 'stage' && args[0] instanceof ConstantExpression) label += '(' + args[0].value + ')'
    def here = path ? path + '/' + label : label
    println here
    closures.each { walk(it.code, here) }
}
unit.AST.modules[0].statementBlock.statements.each { walk(it, '') }
"""


def test_jenkinsfile_parses_with_groovy_to_the_same_blocks(tmp_path):
    groovy = shutil.which("groovy")
    if not groovy:
        pytest.skip("groovy is not installed (Debian: apt-get install groovy): syntax not checked by Groovy")
    env = dict(os.environ)
    java = shutil.which("java")
    if java and not Path(env.get("JAVA_HOME", "/nonexistent"), "bin", "java").exists():
        env["JAVA_HOME"] = str(Path(os.path.realpath(java)).parents[1])
    script = tmp_path / "outline.groovy"
    script.write_text(GROOVY_OUTLINE)
    r = subprocess.run([groovy, str(script), str(CI / "Jenkinsfile")], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    _, root = _jenkinsfile()
    assert r.stdout.split() == root.paths()


# --- systemd -----------------------------------------------------------------------------------

UNITS = [CI / "systemd" / "hotplug-harness-nightly.service", CI / "systemd" / "hotplug-harness-nightly.timer"]


def _unit(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        s = raw.strip()
        if s and not s.startswith(("#", ";", "[")) and "=" in s:
            k, v = s.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_systemd_units_say_what_the_nightly_needs():
    service, timer = (_unit(p) for p in UNITS)
    assert service["Type"] == ["oneshot"]
    assert service["WorkingDirectory"][0].startswith("/")
    assert "make nightly" in service["ExecStart"][0]
    assert "harness restore" in service["ExecStopPost"][0]
    stop_post = service["ExecStopPost"][0]
    assert stop_post.index(f"{ROOT_CHECK} . &&") < stop_post.index(".venv/bin/python")
    assert service["ExecStartPre"] == [f"{ROOT_CHECK} ."]  # before make reads the checkout
    assert "KillMode" not in service, "every process of the run must get SIGTERM"
    assert timer["Persistent"] == ["true"] and timer["RandomizedDelaySec"]
    assert timer["WantedBy"] == ["timers.target"]


def test_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    if not tool:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    # (the units as installed, but for root's copy of the check: verify wants it executable
    # where the unit names it, and this machine has not installed it)
    for unit in UNITS:
        (tmp_path / unit.name).write_text(unit.read_text().replace(
            ROOT_CHECK, str(ROOT / ".ci" / "check-root-tree")))
    r = subprocess.run([tool, "verify", *(str(tmp_path / u.name) for u in UNITS)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "hotplug-harness" not in out, out
    cal = subprocess.run([tool, "calendar", _unit(UNITS[1])["OnCalendar"][0]], capture_output=True, text=True)
    assert cal.returncode == 0, cal.stderr


# --- docs/fleet.md ---------------------------------------------------------------------------------

def test_fleet_doc_names_files_that_exist():
    doc = (ROOT / "docs" / "fleet.md").read_text()
    for rel in set(re.findall(r"`(ci/[\w./-]+)`", doc)):
        assert (ROOT / rel).exists(), rel
    for link in re.findall(r"\]\(([\w.-]+\.md)\)", doc):
        assert (ROOT / "docs" / link).exists(), link


def test_jenkinsfile_root_stages_only_for_protected_branches_fresh_venv_no_key():
    """Issue 31, item 13, the Jenkinsfile's equivalent: no change request and no unprotected
    branch runs the host stages; the venv is made afresh; no private key is archived."""
    text, root = _jenkinsfile()
    pipeline = root.child("pipeline")
    assert re.search(r"HH_PROTECTED_BRANCHES\s*=\s*'main'", pipeline.child("environment").text)
    for stage in pipeline.child("stages").children:
        when = stage.child("when").text
        assert "beforeAgent true" in when, stage.label
        assert "not { changeRequest() }" in when, stage.label
        assert "in env.HH_PROTECTED_BRANCHES.tokenize(' ')" in when, stage.label
    assert "rm -rf reports/run-* reports/latest .venv" in text
    for step in ("archiveArtifacts", "stash name"):
        line = text[text.index(step):text.index(step) + 300]
        assert "excludes: 'reports/run-*/cloud-init/**, reports/**/id_*'" in line, step


# --- what reaches the root nightly's make ------------------------------------------------------

#: Pytest options as a CI parameter could carry them: make's $(shell), a shell's ; and `...`, and
#: a quoted option value that must stay one word.
_HOSTILE_ARGS = ('$(shell touch pwned-make) "; touch pwned-semicolon; " `touch pwned-backquote` '
                 "$(touch pwned-dollar) -k 'a b'")


def _ci_nightly_lines() -> dict[str, str]:
    """The command line each CI file runs `make nightly` with."""
    doc = _gitlab()
    gitlab = [s for job in _host_jobs(doc).values() for s in job["script"] if "make nightly" in s]
    jenkins = [line.strip() for line in (CI / "Jenkinsfile").read_text().splitlines()
               if "make nightly" in line and not line.strip().startswith("//")]
    exec_start = _unit(UNITS[0])["ExecStart"][0].replace("/usr/bin/make", "make")
    assert len(gitlab) == 1 and len(jenkins) == 1, (gitlab, jenkins)
    return {"gitlab": gitlab[0], "jenkins": jenkins[0], "systemd": exec_start}


@pytest.mark.parametrize("ci", ["gitlab", "jenkins", "systemd"])
def test_ci_pytest_args_reach_pytest_as_words_and_are_never_run(ci, tmp_path):
    """Issue 31 follow-up: `make nightly PYTEST_ARGS="$HH_PYTEST_ARGS"` let make expand $(shell)
    in the parameter and the recipe's shell run its `;` and backquotes, as root. The CI line runs
    here for real, with this Makefile, a `make` that skips the image and stand-ins for the venv's
    python and pytest: nothing in the arguments runs, and pytest gets them as shell words."""
    line = _ci_nightly_lines()[ci]
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "make").write_text(f'#!/bin/sh\n[ "$*" = "--no-print-directory image" ] && '
                                  f'exit 0\nexec {make} -f {ROOT / "Makefile"} '
                                  f'MAKE={bin_dir / "make"} PY="{tmp_path}/stub" '
                                  f'PYTEST="{tmp_path}/stub" "$@"\n')
    (tmp_path / ".ci").mkdir()
    shutil.copy(ROOT / ".ci/check-root-tree", tmp_path / ".ci")
    (tmp_path / "stub").write_text('#!/bin/sh\nprintf "%s\\n" "$*" "${PYTEST_ADDOPTS:-}" '
                                   '>> calls.log\n')
    for f in (bin_dir / "make", tmp_path / "stub"):
        f.chmod(0o755)
    (tmp_path / "inv.toml").write_text("")
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path),
           "HH_INVENTORY": "inv.toml", "HH_PYTEST_ARGS": _HOSTILE_ARGS, "HH_ROOT_GRANT": "x"}
    r = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not list(tmp_path.glob("pwned-*")), f"{ci}: the arguments ran: {line}"
    calls = (tmp_path / "calls.log").read_text().splitlines()
    run = calls.index("tests/scenarios --backend vfio --host-inventory inv.toml -n 3 "
                      "--dist loadgroup")
    assert shlex.split(calls[run + 1]) == shlex.split(_HOSTILE_ARGS)
    assert "-m harness plan --inventory inv.toml" in calls


def test_make_nightly_refuses_pytest_args_on_its_command_line(tmp_path):
    """PYTEST_ARGS would be parsed by make and the shell as root: the nightly says where the
    options go instead of running anything."""
    r = subprocess.run(["make", "-f", str(ROOT / "Makefile"), "nightly",
                        "PYTEST_ARGS=-k nic", f"PY={tmp_path}/none", f"PYTEST={tmp_path}/none"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "HH_PYTEST_ARGS" in r.stdout, r.stdout + r.stderr
    # an empty one (the unit file of an older version passes PYTEST_ARGS=) is no option
    r = subprocess.run(["make", "-f", str(ROOT / "Makefile"), "nightly", "PYTEST_ARGS=",
                        "INVENTORY=none.toml", f"MAKE={tmp_path}/none"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert "HH_PYTEST_ARGS" not in r.stdout + r.stderr, r.stdout + r.stderr


def test_jenkinsfile_root_stage_needs_the_credential_only_the_protected_job_has():
    """A branch can delete the Jenkinsfile's `when` guards; a copy of the file in any job other
    than the protected nightly (which alone sees the credential) stops before root runs."""
    text, root = _jenkinsfile()
    cells = root.child("pipeline").child("stages")
    matrix = [s for s in cells.children if any(c.label == "matrix" for c in s.children)][0]
    steps = "".join(s.text for s in matrix.child("matrix").child("stages").children)
    grant = re.search(r"withCredentials\(\[string\(credentialsId: '([\w-]+)', "
                      r"variable: 'HH_ROOT_GRANT'\)\]\)", steps)
    assert grant, "the host stage binds no credential"
    after = steps[grant.end():]
    assert after.index('test -n "$HH_ROOT_GRANT"') < after.index("make nightly")
    restore = steps.index("harness restore")  # post { always }: root too
    assert steps.rindex("credentialsId: 'hotplug-vtd-root-nightly'", 0, restore) > grant.end()
    assert '[ -n "$HH_ROOT_GRANT" ] &&' in steps[restore - 200:restore]
    fleet = (ROOT / "docs" / "fleet.md").read_text()
    assert f"`{grant[1]}`" in fleet, "docs/fleet.md must name the credential to create"
