//! The Tekton and Kubernetes manifests (tekton/, deploy/) against each other and against the
//! binaries: every YAML file parses; the references Tekton resolves at run time (params,
//! workspaces, results, `$(tasks.T.results.R)`, runAfter, `when`) are declared, which the JSON
//! Schemas cannot check; every `yolo-*` command line in a Task parses with the binary's own CLI
//! (`YOLO_RS_PARSE_ONLY=1`); the JSON Schemas, yamllint and promtool through
//! tools/ci/check_manifests.py; and the Pipeline itself runs locally in DAG order on tiny
//! `shapes` data, steps taken from the YAML, with the quality gate evaluated as Tekton does.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            yaml_files(&p, out);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
}

/// Every document of every YAML file under tekton/ and deploy/, as JSON, with its file.
fn manifests() -> Vec<(PathBuf, Value)> {
    let mut files = Vec::new();
    for d in ["tekton", "deploy"] {
        yaml_files(&root().join(d), &mut files);
    }
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for de in serde_yaml::Deserializer::from_str(&text) {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(de)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", f.display()));
            if v.is_null() {
                continue;
            }
            let j = serde_json::to_value(&v).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            docs.push((f.clone(), j));
        }
    }
    docs
}

fn kind(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or("")
}

fn name(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or("")
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(|a| a.as_slice()).unwrap_or(&[])
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// The `$(...)` variable references in a string: text between `$(` and `)` without spaces or
/// parentheses (shell command substitutions such as `$(cat "$f")` are not variables).
fn refs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("$(") {
        let after = &rest[i + 2..];
        match after.find(|c: char| c == ')' || c == '(' || c.is_whitespace()) {
            Some(j) if after.as_bytes()[j] == b')' => {
                out.push(after[..j].to_string());
                rest = &after[j + 1..];
            }
            _ => rest = after,
        }
    }
    out
}

/// Every string inside a JSON value.
fn strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(x) => out.push(x),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

fn all_refs(v: &Value) -> Vec<String> {
    let mut ss = Vec::new();
    strings(v, &mut ss);
    ss.into_iter().flat_map(refs).collect()
}

fn names(list: &Value) -> BTreeSet<String> {
    arr(list)
        .iter()
        .map(|x| s(&x["name"]).to_string())
        .collect()
}

/// A param reference `params.X`, `params.X[*]` or `params.X[0]`: X.
fn param_ref(r: &str) -> Option<&str> {
    let p = r.strip_prefix("params.")?;
    Some(p.split('[').next().unwrap())
}

struct Catalog {
    tasks: BTreeMap<String, Value>,
    pipelines: BTreeMap<String, Value>,
    docs: Vec<(PathBuf, Value)>,
}

fn catalog() -> Catalog {
    let docs = manifests();
    let mut tasks = BTreeMap::new();
    let mut pipelines = BTreeMap::new();
    for (f, d) in &docs {
        match kind(d) {
            "Task" => {
                assert!(
                    tasks.insert(name(d).to_string(), d.clone()).is_none(),
                    "{}: second Task {}",
                    f.display(),
                    name(d)
                );
            }
            "Pipeline" => {
                pipelines.insert(name(d).to_string(), d.clone());
            }
            _ => {}
        }
    }
    Catalog {
        tasks,
        pipelines,
        docs,
    }
}

/// What the schemas miss, for one Task: every variable it uses is declared.
fn check_task(t: &Value) -> Vec<String> {
    let tn = name(t);
    let spec = &t["spec"];
    let mut errs = Vec::new();
    let params: HashMap<String, String> = arr(&spec["params"])
        .iter()
        .map(|p| {
            (
                s(&p["name"]).to_string(),
                p["type"].as_str().unwrap_or("string").to_string(),
            )
        })
        .collect();
    let workspaces = names(&spec["workspaces"]);
    let results = names(&spec["results"]);
    for p in arr(&spec["params"]) {
        if s(&p["description"]).is_empty() {
            errs.push(format!(
                "Task {tn}: param {} has no description",
                s(&p["name"])
            ));
        }
    }
    let steps = arr(&spec["steps"]);
    let mut seen_steps = BTreeSet::new();
    for (i, step) in steps.iter().enumerate() {
        let sn = s(&step["name"]);
        if sn.is_empty() {
            errs.push(format!("Task {tn}: step {i} has no name"));
        }
        let image = s(&step["image"]);
        if image.contains("yolo-rs/") {
            if !step["script"].is_null() {
                errs.push(format!(
                    "Task {tn}: step {sn} uses `script`, but the yolo-rs images have no shell"
                ));
            }
            let bin = yolo_binary_of_image(image);
            let cmd0 = step["command"]
                .get(0)
                .and_then(|c| c.as_str())
                .unwrap_or("");
            if bin.is_none() || Path::new(cmd0).file_name().and_then(|n| n.to_str()) != bin {
                errs.push(format!(
                    "Task {tn}: step {sn}: command {cmd0:?} is not the binary of image {image}"
                ));
            }
        }
        for r in all_refs(step) {
            if let Some(other) = r
                .strip_prefix("steps.step-")
                .and_then(|x| x.strip_suffix(".exitCode.path"))
            {
                if !seen_steps.contains(other) {
                    errs.push(format!(
                        "Task {tn}: step {sn} reads the exit code of {other}, not an earlier step"
                    ));
                }
            }
        }
        // An array param expands only as a whole list item.
        for field in ["args", "command"] {
            for a in arr(&step[field]) {
                let a = s(a);
                for r in refs(a) {
                    if let Some(p) = param_ref(&r) {
                        let is_array = params.get(p).map(|t| t == "array").unwrap_or(false);
                        if r.ends_with("[*]") && (!is_array || a != format!("$({r})")) {
                            errs.push(format!("Task {tn}: `{a}` expands {p}[*] (must be an array param, alone in its item)"));
                        }
                        if !r.ends_with("[*]") && is_array {
                            errs.push(format!(
                                "Task {tn}: array param {p} used as a string in `{a}`"
                            ));
                        }
                    }
                }
            }
        }
        seen_steps.insert(sn.to_string());
    }
    for r in all_refs(spec) {
        let ok = if let Some(p) = param_ref(&r) {
            params.contains_key(p)
        } else if let Some(w) = r.strip_prefix("workspaces.") {
            let (wn, field) = w.rsplit_once('.').unwrap_or((w, ""));
            workspaces.contains(wn) && matches!(field, "path" | "bound" | "claim" | "volume")
        } else if let Some(x) = r.strip_prefix("results.") {
            x.strip_suffix(".path")
                .is_some_and(|rn| results.contains(rn))
        } else if let Some(x) = r.strip_prefix("steps.step-") {
            x.strip_suffix(".exitCode.path")
                .is_some_and(|sn| steps.iter().any(|st| s(&st["name"]) == sn))
        } else {
            r.starts_with("context.")
        };
        if !ok {
            errs.push(format!("Task {tn}: $({r}) is not declared"));
        }
    }
    for key in ["pipelines.minVersion", "categories", "tags"] {
        if t["metadata"]["annotations"][format!("tekton.dev/{key}")]
            .as_str()
            .is_none()
        {
            errs.push(format!("Task {tn}: no tekton.dev/{key} annotation"));
        }
    }
    errs
}

/// What the schemas miss, for one Pipeline: references, runAfter, `when`, and the params and
/// workspaces each pipeline task gives its (local) Task.
fn check_pipeline(p: &Value, tasks: &BTreeMap<String, Value>) -> Vec<String> {
    let pn = name(p);
    let spec = &p["spec"];
    let mut errs = Vec::new();
    let params: HashMap<String, String> = arr(&spec["params"])
        .iter()
        .map(|x| {
            (
                s(&x["name"]).to_string(),
                x["type"].as_str().unwrap_or("string").to_string(),
            )
        })
        .collect();
    let pws: BTreeMap<String, bool> = arr(&spec["workspaces"])
        .iter()
        .map(|w| {
            (
                s(&w["name"]).to_string(),
                w["optional"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    let regular: BTreeMap<String, &Value> = arr(&spec["tasks"])
        .iter()
        .map(|t| (s(&t["name"]).to_string(), t))
        .collect();
    let finally: BTreeMap<String, &Value> = arr(&spec["finally"])
        .iter()
        .map(|t| (s(&t["name"]).to_string(), t))
        .collect();
    let task_of = |pt: &Value| -> Option<&Value> {
        if pt["taskRef"]["resolver"].is_string() {
            return None; // a remote Task: its params are not ours to check
        }
        tasks.get(s(&pt["taskRef"]["name"]))
    };
    let declares_result =
        |t: &str, r: &str, pool: &BTreeMap<String, &Value>| -> Result<(), String> {
            let pt = pool.get(t).ok_or_else(|| format!("no pipeline task {t}"))?;
            match task_of(pt) {
                Some(task) if names(&task["spec"]["results"]).contains(r) => Ok(()),
                Some(_) => Err(format!("Task of {t} declares no result {r}")),
                None => Err(format!(
                    "{t} is a remote task: its results cannot be checked"
                )),
            }
        };
    let check_ref = |r: &str, in_finally: bool, errs: &mut Vec<String>, whence: &str| {
        let ok: Result<(), String> = if let Some(x) = param_ref(r) {
            if params.contains_key(x) {
                Ok(())
            } else {
                Err("not a Pipeline param".into())
            }
        } else if let Some(x) = r.strip_prefix("tasks.") {
            let parts: Vec<&str> = x.split('.').collect();
            match parts.as_slice() {
                [t, "results", res] => declares_result(t, res, &regular),
                ["status"] if in_finally => Ok(()),
                [t, "status"] if in_finally => {
                    if regular.contains_key(*t) {
                        Ok(())
                    } else {
                        Err(format!("no pipeline task {t}"))
                    }
                }
                _ => Err("not a reference Tekton resolves here".into()),
            }
        } else if let Some(x) = r.strip_prefix("finally.") {
            match x.split('.').collect::<Vec<_>>().as_slice() {
                [t, "results", res] if whence == "results" => declares_result(t, res, &finally),
                _ => Err("finally results only in Pipeline results".into()),
            }
        } else if r.starts_with("context.") || r.starts_with("workspaces.") && r.ends_with(".bound")
        {
            Ok(())
        } else {
            Err("unknown variable".into())
        };
        if let Err(e) = ok {
            errs.push(format!("Pipeline {pn}: {whence}: $({r}): {e}"));
        }
    };
    for (tn, pt, in_finally) in regular
        .iter()
        .map(|(k, v)| (k, v, false))
        .chain(finally.iter().map(|(k, v)| (k, v, true)))
    {
        let whence = format!("task {tn}");
        for r in all_refs(pt) {
            check_ref(&r, in_finally, &mut errs, &whence);
        }
        for ra in arr(&pt["runAfter"]) {
            if !regular.contains_key(s(ra)) {
                errs.push(format!(
                    "Pipeline {pn}: task {tn} runs after {}, which is no pipeline task",
                    s(ra)
                ));
            }
        }
        if in_finally && !pt["runAfter"].is_null() {
            errs.push(format!("Pipeline {pn}: finally task {tn} has runAfter"));
        }
        for w in arr(&pt["when"]) {
            let op = s(&w["operator"]);
            if op != "in" && op != "notin" {
                errs.push(format!("Pipeline {pn}: task {tn}: when operator `{op}` (Tekton accepts only in, notin)"));
            }
            if arr(&w["values"]).is_empty() {
                errs.push(format!("Pipeline {pn}: task {tn}: when without values"));
            }
        }
        for w in arr(&pt["workspaces"]) {
            if !pws.contains_key(s(&w["workspace"])) {
                errs.push(format!(
                    "Pipeline {pn}: task {tn} binds undeclared workspace {}",
                    s(&w["workspace"])
                ));
            }
        }
        let Some(task) = task_of(pt) else {
            if !pt["taskRef"]["resolver"].is_string() {
                errs.push(format!(
                    "Pipeline {pn}: task {tn} refers to unknown Task {}",
                    s(&pt["taskRef"]["name"])
                ));
            }
            continue;
        };
        let tparams: BTreeMap<String, &Value> = arr(&task["spec"]["params"])
            .iter()
            .map(|x| (s(&x["name"]).to_string(), x))
            .collect();
        let given: BTreeMap<String, &Value> = arr(&pt["params"])
            .iter()
            .map(|x| (s(&x["name"]).to_string(), &x["value"]))
            .collect();
        for (g, v) in &given {
            match tparams.get(g) {
                None => errs.push(format!(
                    "Pipeline {pn}: task {tn} gives param {g}, which Task {} does not declare",
                    name(task)
                )),
                Some(tp) => {
                    let want_array = tp["type"].as_str() == Some("array");
                    if want_array != v.is_array() {
                        errs.push(format!(
                            "Pipeline {pn}: task {tn}: param {g} has the wrong type"
                        ));
                    }
                }
            }
        }
        for (n, tp) in &tparams {
            if tp.get("default").is_none() && !given.contains_key(n) {
                errs.push(format!(
                    "Pipeline {pn}: task {tn} does not give required param {n}"
                ));
            }
        }
        let bound: BTreeSet<String> = names(&pt["workspaces"]);
        for w in arr(&task["spec"]["workspaces"]) {
            let wn = s(&w["name"]);
            if !w["optional"].as_bool().unwrap_or(false) && !bound.contains(wn) {
                errs.push(format!(
                    "Pipeline {pn}: task {tn} does not bind workspace {wn}"
                ));
            }
        }
        let tws = names(&task["spec"]["workspaces"]);
        for b in &bound {
            if !tws.contains(b) {
                errs.push(format!(
                    "Pipeline {pn}: task {tn} binds {b}, which Task {} does not declare",
                    name(task)
                ));
            }
        }
        // An optional pipeline workspace may reach only an optional task workspace.
        for w in arr(&pt["workspaces"]) {
            let optional_task_ws = arr(&task["spec"]["workspaces"]).iter().any(|x| {
                s(&x["name"]) == s(&w["name"]) && x["optional"].as_bool().unwrap_or(false)
            });
            if pws.get(s(&w["workspace"])).copied().unwrap_or(false) && !optional_task_ws {
                errs.push(format!(
                    "Pipeline {pn}: task {tn}: optional workspace {} bound to required {}",
                    s(&w["workspace"]),
                    s(&w["name"])
                ));
            }
        }
    }
    for r in arr(&spec["results"]) {
        for x in refs(s(&r["value"])) {
            check_ref(&x, false, &mut errs, "results");
        }
    }
    errs
}

/// A PipelineRun (or the one a TriggerTemplate makes) against its Pipeline.
fn check_pipelinerun(pr: &Value, pipelines: &BTreeMap<String, Value>, what: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let pname = s(&pr["spec"]["pipelineRef"]["name"]);
    let Some(p) = pipelines.get(pname) else {
        return vec![format!("{what}: no Pipeline {pname}")];
    };
    let pparams: BTreeMap<String, &Value> = arr(&p["spec"]["params"])
        .iter()
        .map(|x| (s(&x["name"]).to_string(), x))
        .collect();
    let given = names(&pr["spec"]["params"]);
    for g in &given {
        if !pparams.contains_key(g) {
            errs.push(format!(
                "{what}: param {g} is not a param of Pipeline {pname}"
            ));
        }
    }
    for (n, x) in &pparams {
        if x.get("default").is_none() && !given.contains(n) {
            errs.push(format!("{what}: required param {n} not given"));
        }
    }
    let bound = names(&pr["spec"]["workspaces"]);
    for w in arr(&p["spec"]["workspaces"]) {
        if !w["optional"].as_bool().unwrap_or(false) && !bound.contains(s(&w["name"])) {
            errs.push(format!("{what}: workspace {} not bound", s(&w["name"])));
        }
    }
    let pws = names(&p["spec"]["workspaces"]);
    for b in &bound {
        if !pws.contains(b) {
            errs.push(format!("{what}: binds {b}, not a workspace of {pname}"));
        }
    }
    let ptasks: BTreeSet<String> = names(&p["spec"]["tasks"])
        .union(&names(&p["spec"]["finally"]))
        .cloned()
        .collect();
    for t in arr(&pr["spec"]["taskRunSpecs"]) {
        if !ptasks.contains(s(&t["pipelineTaskName"])) {
            errs.push(format!(
                "{what}: taskRunSpecs names {}, not a task of {pname}",
                s(&t["pipelineTaskName"])
            ));
        }
    }
    errs
}

fn check_all(c: &Catalog) -> Vec<String> {
    let mut errs = Vec::new();
    for t in c.tasks.values() {
        errs.extend(check_task(t));
    }
    for p in c.pipelines.values() {
        errs.extend(check_pipeline(p, &c.tasks));
    }
    let by_kind = |k: &'static str| c.docs.iter().filter(move |(_, d)| kind(d) == k);
    for (f, pr) in by_kind("PipelineRun") {
        errs.extend(check_pipelinerun(
            pr,
            &c.pipelines,
            &f.display().to_string(),
        ));
    }
    for (f, tt) in by_kind("TriggerTemplate") {
        let declared = names(&tt["spec"]["params"]);
        for r in all_refs(&tt["spec"]["resourcetemplates"]) {
            match r.strip_prefix("tt.params.") {
                Some(x) if declared.contains(x) => {}
                _ => errs.push(format!(
                    "{}: $({r}) is not a TriggerTemplate param",
                    f.display()
                )),
            }
        }
        for rt in arr(&tt["spec"]["resourcetemplates"]) {
            if kind(rt) == "PipelineRun" {
                errs.extend(check_pipelinerun(
                    rt,
                    &c.pipelines,
                    &format!("{} (template)", f.display()),
                ));
            }
        }
    }
    let bindings: BTreeMap<String, &Value> = by_kind("TriggerBinding")
        .map(|(_, d)| (name(d).to_string(), d))
        .collect();
    let templates: BTreeMap<String, &Value> = by_kind("TriggerTemplate")
        .map(|(_, d)| (name(d).to_string(), d))
        .collect();
    for (f, el) in by_kind("EventListener") {
        for tr in arr(&el["spec"]["triggers"]) {
            let mut bound = BTreeSet::new();
            for b in arr(&tr["bindings"]) {
                match bindings.get(s(&b["ref"])) {
                    Some(tb) => bound.extend(names(&tb["spec"]["params"])),
                    None => errs.push(format!(
                        "{}: no TriggerBinding {}",
                        f.display(),
                        s(&b["ref"])
                    )),
                }
            }
            match templates.get(s(&tr["template"]["ref"])) {
                Some(tt) => {
                    for p in arr(&tt["spec"]["params"]) {
                        if p.get("default").is_none() && !bound.contains(s(&p["name"])) {
                            errs.push(format!(
                                "{}: template param {} gets no value from the bindings",
                                f.display(),
                                s(&p["name"])
                            ));
                        }
                    }
                }
                None => errs.push(format!(
                    "{}: no TriggerTemplate {}",
                    f.display(),
                    s(&tr["template"]["ref"])
                )),
            }
        }
    }
    errs
}

#[test]
fn every_manifest_parses_and_the_expected_objects_exist() {
    let c = catalog();
    for t in [
        "yolo-check-data",
        "yolo-train",
        "yolo-val",
        "yolo-export",
        "build-image",
        "deploy",
        "yolo-report",
        "yolo-bench",
    ] {
        assert!(c.tasks.contains_key(t), "no Task {t}");
        assert!(
            root()
                .join("tekton/tasks")
                .join(t)
                .join("README.md")
                .exists(),
            "no README for Task {t}"
        );
    }
    let kinds: BTreeSet<&str> = c.docs.iter().map(|(_, d)| kind(d)).collect();
    for k in [
        "Pipeline",
        "PipelineRun",
        "EventListener",
        "TriggerBinding",
        "TriggerTemplate",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PrometheusRule",
        "Application",
        "Kustomization",
        "Job",
        "PersistentVolumeClaim",
    ] {
        assert!(
            kinds.contains(k),
            "no {k} under tekton/ or deploy/ (have {kinds:?})"
        );
    }
    for (f, d) in &c.docs {
        assert!(
            d["apiVersion"].is_string() && d["kind"].is_string(),
            "{}: no apiVersion/kind",
            f.display()
        );
    }
    // The Grafana dashboard is JSON, and the kustomization generates it.
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/yolo-infer-serving.json")).unwrap(),
    )
    .unwrap();
    assert!(arr(&dash["panels"]).len() >= 8);
    // The train step asks for a GPU; the yolo-val gate's results are the binary's.
    let train = &c.tasks["yolo-train"]["spec"]["steps"][0];
    assert_eq!(train["computeResources"]["limits"]["nvidia.com/gpu"], "1");
    assert!(arr(&train["args"]).iter().any(|a| a == "--auto-resume"));
}

#[test]
fn tekton_references_resolve() {
    let c = catalog();
    let errs = check_all(&c);
    assert!(
        errs.is_empty(),
        "unresolved references:\n{}",
        errs.join("\n")
    );
}

/// The Pipeline task `name` of the catalog's pipeline, to mutate.
fn pipeline_task_mut<'a>(c: &'a mut Catalog, name: &str) -> &'a mut Value {
    c.pipelines.get_mut("yolo-train-pipeline").unwrap()["spec"]["tasks"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|t| t["name"] == name)
        .unwrap()
}

/// The checker is not vacuous: each injected mistake is reported.
#[test]
fn reference_checker_catches_injected_mistakes() {
    type Mutation = fn(&mut Catalog);
    let cases: Vec<(&str, Mutation, &str)> = vec![
        (
            "greaterThan",
            |c| {
                let t = pipeline_task_mut(c, "yolo-export");
                t["when"][0]["operator"] = "greaterThan".into();
            },
            "when operator `greaterThan`",
        ),
        (
            "result",
            |c| {
                let t = pipeline_task_mut(c, "yolo-export");
                t["when"][0]["input"] = "$(tasks.yolo-val.results.pass)".into();
            },
            "declares no result pass",
        ),
        (
            "runAfter",
            |c| {
                let t = pipeline_task_mut(c, "yolo-val");
                t["runAfter"] = serde_json::json!(["yolo-training"]);
            },
            "which is no pipeline task",
        ),
        (
            "param",
            |c| {
                let t = c.tasks.get_mut("yolo-val").unwrap();
                t["spec"]["steps"][0]["args"][2] = "$(params.weight)".into();
            },
            "$(params.weight) is not declared",
        ),
        (
            "workspace",
            |c| {
                let t = c.tasks.get_mut("yolo-train").unwrap();
                t["spec"]["steps"][0]["args"][1] = "$(workspaces.dataset.path)/x".into();
            },
            "$(workspaces.dataset.path) is not declared",
        ),
        (
            "task param",
            |c| {
                let t = pipeline_task_mut(c, "yolo-train");
                t["params"]
                    .as_array_mut()
                    .unwrap()
                    .push(serde_json::json!({"name": "epoch", "value": "3"}));
            },
            "gives param epoch",
        ),
        (
            "script",
            |c| {
                let t = c.tasks.get_mut("yolo-export").unwrap();
                t["spec"]["steps"][0]["script"] = "yolo-export --help".into();
            },
            "uses `script`",
        ),
    ];
    for (what, mutate, expect) in cases {
        let mut c = catalog();
        mutate(&mut c);
        let errs = check_all(&c);
        assert!(
            errs.iter().any(|e| e.contains(expect)),
            "{what}: expected an error containing {expect:?}, got {errs:#?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Running step command lines.

fn yolo_binary_of_image(image: &str) -> Option<&'static str> {
    ["yolo-train", "yolo-infer", "yolo-export", "yolo-bench"]
        .into_iter()
        .find(|b| {
            image.contains(&format!("yolo-rs/{b}:")) || image.ends_with(&format!("yolo-rs/{b}"))
        })
}

/// The binary `name` of this workspace build: yolo-infer from Cargo, the others beside it
/// (`cargo test --workspace` builds them).
fn binary(name: &str) -> PathBuf {
    let infer = PathBuf::from(env!("CARGO_BIN_EXE_yolo-infer"));
    let p = infer.with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        p.exists(),
        "{} is missing: build it (cargo build -p {name}, or cargo test --workspace)",
        p.display()
    );
    p
}

/// A value for a variable, or a list (an array param expanded with `[*]`).
#[derive(Clone, Debug)]
enum Val {
    Str(String),
    List(Vec<String>),
}

/// Substitutes every variable reference in `text` through `lookup`; a reference it does not
/// know (returns None) is an error. Text that is not a variable stays.
fn subst(text: &str, lookup: &dyn Fn(&str) -> Option<Val>) -> Result<String, String> {
    let mut out = text.to_string();
    for r in refs(text) {
        let known_prefix = [
            "params.",
            "workspaces.",
            "results.",
            "steps.",
            "tasks.",
            "context.",
            "finally.",
        ]
        .iter()
        .any(|p| r.starts_with(p));
        if !known_prefix {
            continue;
        }
        match lookup(&r) {
            Some(Val::Str(v)) => out = out.replace(&format!("$({r})"), &v),
            Some(Val::List(_)) => return Err(format!("array $({r}) inside `{text}`")),
            None => return Err(format!("$({r}) has no value")),
        }
    }
    Ok(out)
}

/// Substitutes a list of items, expanding `$(params.X[*])` items into their elements.
fn subst_list(
    items: &[Value],
    lookup: &dyn Fn(&str) -> Option<Val>,
) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for it in items {
        let it = s(it);
        let rs = refs(it);
        if rs.len() == 1 && it == format!("$({})", rs[0]) && rs[0].ends_with("[*]") {
            match lookup(&rs[0]) {
                Some(Val::List(l)) => out.extend(l),
                other => return Err(format!("$({}) is not an array: {other:?}", rs[0])),
            }
        } else {
            out.push(subst(it, lookup)?);
        }
    }
    Ok(out)
}

/// Task-level lookup: params (values given, else defaults), workspace paths, result paths,
/// step exit-code paths.
struct TaskEnv {
    params: HashMap<String, Val>,
    workspaces: HashMap<String, Option<PathBuf>>,
    results_dir: PathBuf,
    steps_dir: PathBuf,
}

impl TaskEnv {
    fn lookup(&self, r: &str) -> Option<Val> {
        if let Some(p) = r.strip_prefix("params.") {
            let n = p.trim_end_matches("[*]");
            return self.params.get(n).cloned();
        }
        if let Some(w) = r.strip_prefix("workspaces.") {
            let (wn, field) = w.rsplit_once('.')?;
            let bound = self.workspaces.get(wn)?;
            return Some(Val::Str(match field {
                "path" => bound
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                "bound" => bound.is_some().to_string(),
                _ => return None,
            }));
        }
        if let Some(x) = r
            .strip_prefix("results.")
            .and_then(|x| x.strip_suffix(".path"))
        {
            return Some(Val::Str(self.results_dir.join(x).display().to_string()));
        }
        if let Some(x) = r
            .strip_prefix("steps.")
            .and_then(|x| x.strip_suffix(".exitCode.path"))
        {
            return Some(Val::Str(
                self.steps_dir
                    .join(x)
                    .join("exitCode")
                    .display()
                    .to_string(),
            ));
        }
        None
    }
}

fn task_defaults(task: &Value) -> HashMap<String, Val> {
    arr(&task["spec"]["params"])
        .iter()
        .filter_map(|p| {
            let v = p.get("default")?;
            Some((s(&p["name"]).to_string(), json_val(v)))
        })
        .collect()
}

fn json_val(v: &Value) -> Val {
    match v {
        Value::Array(a) => Val::List(a.iter().map(|x| s(x).to_string()).collect()),
        other => Val::Str(s(other).to_string()),
    }
}

/// The argv of a yolo-rs step (command[1..] + args), with `/tekton/results` mapped too.
fn step_argv(step: &Value, env: &TaskEnv) -> Result<(String, Vec<String>), String> {
    let lookup = |r: &str| env.lookup(r);
    let mut argv = subst_list(arr(&step["command"]), &lookup)?;
    argv.extend(subst_list(arr(&step["args"]), &lookup)?);
    let results = env.results_dir.display().to_string();
    let argv: Vec<String> = argv
        .into_iter()
        .map(|a| {
            if a == "/tekton/results" {
                results.clone()
            } else {
                a
            }
        })
        .collect();
    let bin = yolo_binary_of_image(s(&step["image"]))
        .ok_or("not a yolo-rs image")?
        .to_string();
    Ok((bin, argv[1..].to_vec()))
}

fn parse_only(bin: &str, args: &[String]) -> std::process::Output {
    Command::new(binary(bin))
        .args(args)
        .env("YOLO_RS_PARSE_ONLY", "1")
        .output()
        .unwrap()
}

#[test]
fn every_yolo_command_line_parses_with_its_binary() {
    let c = catalog();
    let tmp = tempfile::tempdir().unwrap();
    let sample_weights = "/workspace/models/runs/train/weights/best.safetensors";
    let mut checked = 0;
    // 1. Each Task with its defaults (and a sample for params without one), 2. each with the
    // params the Pipeline gives it (Pipeline defaults, then the example PipelineRun's values).
    let pipeline = &c.pipelines["yolo-train-pipeline"];
    let run = c
        .docs
        .iter()
        .find(|(_, d)| kind(d) == "PipelineRun")
        .map(|(_, d)| d.clone())
        .unwrap();
    let mut pparams: HashMap<String, Val> = task_defaults(pipeline);
    for p in arr(&run["spec"]["params"]) {
        pparams.insert(s(&p["name"]).to_string(), json_val(&p["value"]));
    }
    let mut cases: Vec<(String, &Value, HashMap<String, Val>)> = Vec::new();
    for (tn, task) in &c.tasks {
        let mut params = task_defaults(task);
        params
            .entry("weights".into())
            .or_insert(Val::Str(sample_weights.into()));
        cases.push((format!("Task {tn} (defaults)"), task, params));
    }
    for pt in arr(&pipeline["spec"]["tasks"]) {
        let Some(task) = c.tasks.get(s(&pt["taskRef"]["name"])) else {
            continue;
        };
        let mut params = task_defaults(task);
        let lookup = |r: &str| -> Option<Val> {
            if let Some(p) = param_ref(r) {
                return pparams.get(p).cloned();
            }
            if r.starts_with("tasks.") && r.ends_with(".results.best") {
                return Some(Val::Str(sample_weights.into()));
            }
            r.starts_with("tasks.").then(|| Val::Str("sample".into()))
        };
        for p in arr(&pt["params"]) {
            let v = match &p["value"] {
                Value::Array(a) => Val::List(subst_list(a, &lookup).unwrap()),
                v => Val::Str(subst(s(v), &lookup).unwrap()),
            };
            params.insert(s(&p["name"]).to_string(), v);
        }
        cases.push((format!("Pipeline task {}", s(&pt["name"])), task, params));
    }
    for (what, task, params) in cases {
        let env = TaskEnv {
            params,
            workspaces: names(&task["spec"]["workspaces"])
                .into_iter()
                .map(|w| (w.clone(), Some(PathBuf::from("/workspace").join(w))))
                .collect(),
            results_dir: tmp.path().join("results"),
            steps_dir: tmp.path().join("steps"),
        };
        for step in arr(&task["spec"]["steps"]) {
            if yolo_binary_of_image(s(&step["image"])).is_none() {
                continue;
            }
            let (bin, args) = step_argv(step, &env).unwrap_or_else(|e| panic!("{what}: {e}"));
            let out = parse_only(&bin, &args);
            assert!(
                out.status.success(),
                "{what}: `{bin} {}` does not parse:\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            // The same line with an unknown flag is refused (exit 2): PARSE_ONLY really parses.
            let mut bad = args.clone();
            bad.push("--no-such-flag".into());
            assert_eq!(
                parse_only(&bin, &bad).status.code(),
                Some(2),
                "{what}: {bin} accepted --no-such-flag"
            );
            checked += 1;
        }
    }
    // 3. The Kubernetes Jobs' containers (deploy/benchmark-job.yaml): plain args, no params.
    for (f, job) in c.docs.iter().filter(|(_, d)| kind(d) == "Job") {
        for ct in arr(&job["spec"]["template"]["spec"]["containers"]) {
            let Some(bin) = yolo_binary_of_image(s(&ct["image"])) else {
                continue;
            };
            let args: Vec<String> = arr(&ct["args"]).iter().map(|a| s(a).to_string()).collect();
            let out = parse_only(bin, &args);
            assert!(
                out.status.success(),
                "{} Job {}: `{bin} {}` does not parse:\n{}",
                f.display(),
                name(job),
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} yolo command lines found");
}

// ---------------------------------------------------------------------------------------------
// Schemas, yamllint, promtool (tools/ci/check_manifests.py).

#[test]
fn manifests_pass_json_schemas_yamllint_and_promtool() {
    let schemas = root().join("../shared/schemas");
    if !schemas.is_dir() {
        println!("skipped: {} is absent", schemas.display());
        return;
    }
    let python = std::env::var_os("YOLO_RS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/python"));
    let require = std::env::var("YOLO_RS_REQUIRE_PYTHON").is_ok_and(|v| v == "1");
    let has_modules = python.exists()
        && Command::new(&python)
            .args(["-c", "import jsonschema, yaml, yamllint"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !has_modules {
        assert!(
            !require,
            "YOLO_RS_REQUIRE_PYTHON=1 but {} lacks jsonschema/pyyaml/yamllint",
            python.display()
        );
        println!("skipped: {} with jsonschema, pyyaml and yamllint is missing (pip install -r tools/requirements-ci.txt)", python.display());
        return;
    }
    let out = Command::new(&python)
        .arg(root().join("tools/ci/check_manifests.py"))
        .arg("--schemas")
        .arg(&schemas)
        .current_dir(root())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "check_manifests.py failed:\n{text}");
    assert!(text.contains("validated"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// The Pipeline run locally.

#[derive(Clone, Debug, PartialEq)]
enum Status {
    Succeeded,
    Failed(String),
    /// Not run: `when` false, or results it needs are missing.
    Skipped(String),
    /// Not run here (remote Task, or one that needs a cluster: buildah, git push).
    NotRunLocally(String),
}

struct LocalRun {
    status: BTreeMap<String, Status>,
    results: BTreeMap<String, BTreeMap<String, String>>,
    log: Vec<String>,
}

/// Pipeline tasks that need a cluster or the network; everything else is run.
const NOT_LOCAL: &[&str] = &["build-image", "deploy"];

fn local_run(
    c: &Catalog,
    work: &Path,
    pipeline_params: &[(&str, Val)],
    workspaces: &HashMap<String, PathBuf>,
) -> LocalRun {
    let p = &c.pipelines["yolo-train-pipeline"];
    let mut pparams = task_defaults(p);
    for (k, v) in pipeline_params {
        pparams.insert(k.to_string(), v.clone());
    }
    let mut run = LocalRun {
        status: BTreeMap::new(),
        results: BTreeMap::new(),
        log: Vec::new(),
    };
    let tasks: Vec<&Value> = arr(&p["spec"]["tasks"]).iter().collect();
    // DAG order: runAfter and result references.
    let deps = |pt: &Value| -> BTreeSet<String> {
        let mut d: BTreeSet<String> = arr(&pt["runAfter"])
            .iter()
            .map(|x| s(x).to_string())
            .collect();
        for r in all_refs(pt) {
            if let Some(x) = r.strip_prefix("tasks.") {
                d.insert(x.split('.').next().unwrap().to_string());
            }
        }
        d
    };
    let mut order: Vec<&Value> = Vec::new();
    while order.len() < tasks.len() {
        let before = order.len();
        for pt in &tasks {
            let done = |n: &String| order.iter().any(|o| s(&o["name"]) == n);
            if !order.iter().any(|o| o["name"] == pt["name"]) && deps(pt).iter().all(done) {
                order.push(*pt);
            }
        }
        assert!(order.len() > before, "the Pipeline's tasks have a cycle");
    }
    for pt in order {
        let status = run_pipeline_task(
            c,
            pt,
            &pparams,
            &mut run,
            work,
            workspaces,
            false,
            &deps(pt),
        );
        run.log.push(format!("{}: {status:?}", s(&pt["name"])));
        run.status.insert(s(&pt["name"]).to_string(), status);
    }
    for pt in arr(&p["spec"]["finally"]) {
        let status = run_pipeline_task(
            c,
            pt,
            &pparams,
            &mut run,
            work,
            workspaces,
            true,
            &BTreeSet::new(),
        );
        run.log
            .push(format!("finally {}: {status:?}", s(&pt["name"])));
        run.status.insert(s(&pt["name"]).to_string(), status);
    }
    run
}

/// Tekton's execution status of a pipeline task as `$(tasks.T.status)` shows it.
fn tekton_status(s: Option<&Status>) -> &'static str {
    match s {
        Some(Status::Succeeded) => "Succeeded",
        Some(Status::Failed(_)) => "Failed",
        _ => "None",
    }
}

#[allow(clippy::too_many_arguments)]
fn run_pipeline_task(
    c: &Catalog,
    pt: &Value,
    pparams: &HashMap<String, Val>,
    run: &mut LocalRun,
    work: &Path,
    workspaces: &HashMap<String, PathBuf>,
    is_finally: bool,
    deps: &BTreeSet<String>,
) -> Status {
    let tn = s(&pt["name"]).to_string();
    if let Some(bad) = deps
        .iter()
        .find(|d| matches!(run.status.get(*d), Some(Status::Failed(_))))
    {
        return Status::Skipped(format!("parent {bad} failed"));
    }
    // Pipeline-level lookup; a missing result makes the task skip ("results were missing").
    let missing = std::cell::RefCell::new(None);
    let not_local = std::cell::RefCell::new(None::<String>);
    let aggregate = {
        let st: Vec<&Status> = run.status.values().collect();
        if st.iter().any(|x| matches!(x, Status::Failed(_))) {
            "Failed"
        } else if st.iter().any(|x| !matches!(x, Status::Succeeded)) {
            "Completed"
        } else {
            "Succeeded"
        }
    };
    let lookup = |r: &str| -> Option<Val> {
        if let Some(p) = param_ref(r) {
            return pparams.get(p).cloned();
        }
        if r == "tasks.status" && is_finally {
            return Some(Val::Str(aggregate.into()));
        }
        if let Some(x) = r.strip_prefix("tasks.") {
            let parts: Vec<&str> = x.split('.').collect();
            return match parts.as_slice() {
                [t, "status"] if is_finally => {
                    Some(Val::Str(tekton_status(run.status.get(*t)).into()))
                }
                [t, "results", res] => match run.results.get(*t).and_then(|m| m.get(*res)) {
                    Some(v) => Some(Val::Str(v.clone())),
                    None if matches!(run.status.get(*t), Some(Status::NotRunLocally(_))) => {
                        *not_local.borrow_mut() = Some(format!(
                            "needs $(tasks.{t}.results.{res}) of a task not run locally"
                        ));
                        Some(Val::Str(String::new()))
                    }
                    None => {
                        *missing.borrow_mut() =
                            Some(format!("$(tasks.{t}.results.{res}) is missing"));
                        Some(Val::Str(String::new()))
                    }
                },
                _ => None,
            };
        }
        match r {
            "context.pipelineRun.name" => Some(Val::Str("local-run".into())),
            _ => None,
        }
    };
    // Params of the Task.
    let mut given: Vec<(String, Val)> = Vec::new();
    for p in arr(&pt["params"]) {
        let v = match &p["value"] {
            Value::Array(a) => Val::List(subst_list(a, &lookup).unwrap()),
            v => Val::Str(subst(s(v), &lookup).unwrap()),
        };
        given.push((s(&p["name"]).to_string(), v));
    }
    // `when`, evaluated as Tekton does.
    for w in arr(&pt["when"]) {
        let input = subst(s(&w["input"]), &lookup).unwrap();
        let values = subst_list(arr(&w["values"]), &lookup).unwrap();
        let is_in = values.contains(&input);
        let holds = match s(&w["operator"]) {
            "in" => is_in,
            "notin" => !is_in,
            op => panic!("task {tn}: when operator {op}"),
        };
        if let Some(m) = missing.borrow().clone() {
            return Status::Skipped(format!("results were missing: {m}"));
        }
        if let Some(m) = not_local.borrow().clone() {
            return Status::NotRunLocally(m);
        }
        if !holds {
            return Status::Skipped(format!(
                "when expressions evaluated to false ({input:?} {} {values:?})",
                s(&w["operator"])
            ));
        }
    }
    if let Some(m) = missing.borrow().clone() {
        return Status::Skipped(format!("results were missing: {m}"));
    }
    if let Some(m) = not_local.borrow().clone() {
        return Status::NotRunLocally(m);
    }
    if pt["taskRef"]["resolver"].is_string() {
        return Status::NotRunLocally(
            "remote Task (resolver): the workspaces are prepared by the test".into(),
        );
    }
    if NOT_LOCAL.contains(&tn.as_str()) {
        return Status::NotRunLocally("needs a cluster (buildah push / git push)".into());
    }
    let task = &c.tasks[s(&pt["taskRef"]["name"])];
    let mut params = task_defaults(task);
    params.extend(given);
    let tdir = work.join("tekton").join(&tn);
    let env = TaskEnv {
        params,
        workspaces: arr(&task["spec"]["workspaces"])
            .iter()
            .map(|w| {
                let bound = arr(&pt["workspaces"])
                    .iter()
                    .find(|b| b["name"] == w["name"])
                    .and_then(|b| workspaces.get(s(&b["workspace"])).cloned());
                (s(&w["name"]).to_string(), bound)
            })
            .collect(),
        results_dir: tdir.join("results"),
        steps_dir: tdir.join("steps"),
    };
    std::fs::create_dir_all(&env.results_dir).unwrap();
    let cwd = tdir.join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    let started = Instant::now();
    let mut failed = None;
    for step in arr(&task["spec"]["steps"]) {
        let sn = s(&step["name"]);
        let lookup = |r: &str| env.lookup(r);
        let mut cmd = if yolo_binary_of_image(s(&step["image"])).is_some() {
            let (bin, args) = step_argv(step, &env).unwrap();
            if let Some(images) = pipeline_images() {
                // The step's own image (params substituted) under podman, as the cluster
                // runs it: no network, the non-root user, the workspaces at the same paths.
                let image = subst(s(&step["image"]), &lookup).unwrap();
                assert!(image.starts_with(&images.registry), "{image}");
                let entrypoint = s(&step["command"][0]).to_string();
                run.log
                    .push(format!("  {tn}/{sn}: podman {image} {entrypoint} {}", args.join(" ")));
                // The task's folder and every bound workspace, at their own paths.
                let mut mounts: Vec<PathBuf> = vec![work.to_path_buf()];
                mounts.extend(env.workspaces.values().flatten().cloned());
                mounts.sort();
                mounts.dedup();
                for m in &mounts {
                    open_to_the_container_user(m);
                }
                let dir = step["workingDir"]
                    .as_str()
                    .map(|w| PathBuf::from(subst(w, &lookup).unwrap()))
                    .unwrap_or(cwd.clone());
                let mut cmd = Command::new("podman");
                cmd.args(["run", "--rm", "--network", "none", "--user", "65532:65532"]);
                for m in &mounts {
                    cmd.arg("-v").arg(format!("{0}:{0}", m.display()));
                }
                // The step's env goes into the container (podman's own env stays podman's).
                for e in arr(&step["env"]) {
                    let value = subst(s(&e["value"]), &lookup).unwrap();
                    cmd.arg("-e").arg(format!("{}={value}", s(&e["name"])));
                }
                cmd.arg("-w")
                    .arg(&dir)
                    .args(["--entrypoint", &entrypoint, &image])
                    .args(args);
                cmd
            } else {
                run.log
                    .push(format!("  {tn}/{sn}: {bin} {}", args.join(" ")));
                let mut cmd = Command::new(binary(&bin));
                cmd.args(args);
                cmd
            }
        } else if let Some(script) = step["script"].as_str() {
            // A shell-image step (busybox in the cluster): the same script with sh.
            let script = subst(script, &lookup).unwrap();
            let file = tdir.join(format!("{sn}.sh"));
            std::fs::write(&file, script).unwrap();
            let mut cmd = Command::new("sh");
            cmd.arg(&file)
                .args(subst_list(arr(&step["args"]), &lookup).unwrap());
            cmd
        } else {
            panic!("task {tn} step {sn}: neither a yolo-rs image nor a script");
        };
        for e in arr(&step["env"]) {
            cmd.env(s(&e["name"]), subst(s(&e["value"]), &lookup).unwrap());
        }
        let dir = step["workingDir"]
            .as_str()
            .map(|w| PathBuf::from(subst(w, &lookup).unwrap()))
            .unwrap_or(cwd.clone());
        let out = cmd.current_dir(dir).output().unwrap();
        let code = out.status.code().unwrap_or(-1);
        let sdir = env.steps_dir.join(format!("step-{sn}"));
        std::fs::create_dir_all(&sdir).unwrap();
        std::fs::write(sdir.join("exitCode"), code.to_string()).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        run.log.push(format!(
            "  {tn}/{sn}: exit {code}\n{}",
            indent(&format!("{stdout}{stderr}"))
        ));
        if code != 0 && step["onError"].as_str() != Some("continue") {
            failed = Some(format!("step {sn} exited {code}"));
            break;
        }
    }
    run.log
        .push(format!("  {tn}: {:.1}s", started.elapsed().as_secs_f64()));
    if let Some(f) = failed {
        return Status::Failed(f);
    }
    let mut results = BTreeMap::new();
    for r in arr(&task["spec"]["results"]) {
        let rn = s(&r["name"]);
        if let Ok(v) = std::fs::read_to_string(env.results_dir.join(rn)) {
            results.insert(rn.to_string(), v);
        }
    }
    run.results.insert(tn, results);
    Status::Succeeded
}

/// The images the local run uses instead of the binaries: `YOLO_RS_PIPELINE_REGISTRY` (e.g.
/// `localhost`, what images/build.sh tags) and `YOLO_RS_PIPELINE_TAG`, both set (CI sets them
/// after building the images); `None` runs the binaries from target/.
struct PipelineImages {
    registry: String,
    tag: String,
}

fn pipeline_images() -> Option<PipelineImages> {
    Some(PipelineImages {
        registry: std::env::var("YOLO_RS_PIPELINE_REGISTRY").ok()?,
        tag: std::env::var("YOLO_RS_PIPELINE_TAG").ok()?,
    })
}

/// Lets the images' user (65532) write into the test's folders.
fn open_to_the_container_user(work: &Path) {
    let ok = Command::new("chmod")
        .args(["-R", "a+rwX"])
        .arg(work)
        .status()
        .unwrap()
        .success();
    assert!(ok, "chmod -R a+rwX {}", work.display());
}

fn indent(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(15)..];
    tail.iter()
        .map(|l| format!("    | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn tiny_params(min_map50: &str) -> Vec<(&'static str, Val)> {
    let st = |x: &str| Val::Str(x.into());
    let mut images = Vec::new();
    if let Some(i) = pipeline_images() {
        images.push(("image-registry", st(&i.registry)));
        images.push(("image-tag", st(&i.tag)));
        images.push(("train-image-tag", st(&i.tag)));
    }
    // The CPU build of yolo-train (the binary here, or the CPU image): no GPU to name.
    images.push(("train-device", st("flex")));
    images.into_iter().chain(vec![
        ("git-url", st("https://example.invalid/yolo-rs.git")),
        ("data-git-url", st("https://example.invalid/yolo-rs.git")),
        ("gitops-url", st("https://example.invalid/gitops.git")),
        ("data", st("datasets/shapes/data.yaml")),
        ("epochs", st("1")),
        ("imgsz", st("64")),
        ("batch", st("8")),
        ("run-name", st("tiny")),
        ("min-map50", st(min_map50)),
        (
            "train-args",
            Val::List(
                [
                    "--width-multiple",
                    "0.0625",
                    "--depth-multiple",
                    "0.33",
                    "--max-channels",
                    "64",
                    "--quiet",
                ]
                .map(String::from)
                .to_vec(),
            ),
        ),
    ])
    .collect()
}

/// Fresh workspaces: `data` holds tiny shapes data (as fetch-data would clone it), `models` is empty.
fn tiny_workspaces(work: &Path) -> HashMap<String, PathBuf> {
    let data = work.join("ws/data");
    let shapes = data.join("datasets/shapes");
    let out = Command::new(env!("CARGO_BIN_EXE_yolo-infer"))
        .args(["shapes", "--out"])
        .arg(&shapes)
        .args(["--train", "16", "--val", "8", "--imgsz", "64"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let models = work.join("ws/models");
    std::fs::create_dir_all(&models).unwrap();
    [("source", root()), ("data", data), ("models", models)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

fn result<'a>(run: &'a LocalRun, task: &str, r: &str) -> &'a str {
    run.results
        .get(task)
        .and_then(|m| m.get(r))
        .map(|x| x.as_str())
        .unwrap_or_else(|| panic!("no result {task}.{r}\n{}", run.log.join("\n")))
}

fn report_outcome(run: &LocalRun) -> String {
    result(run, "report", "outcome").to_string()
}

/// Slow test (two tiny trainings; about a minute on 2 cores in the debug profile).
#[test]
fn pipeline_runs_locally_in_dag_order_and_the_gate_stops_it() {
    let c = catalog();
    // 1. A gate that passes (min-map50 0): check-data -> train -> val -> export run for real.
    let tmp = tempfile::tempdir().unwrap();
    let ws = tiny_workspaces(tmp.path());
    // A pod that died before its first epoch left the run folder: --auto-resume must train in
    // exactly that folder, not tiny2.
    std::fs::create_dir_all(ws["models"].join("runs/tiny")).unwrap();
    let run = local_run(&c, tmp.path(), &tiny_params("0"), &ws);
    let log = run.log.join("\n");
    println!("{log}");
    let st = |t: &str| {
        run.status
            .get(t)
            .cloned()
            .unwrap_or_else(|| panic!("no status for {t}\n{log}"))
    };
    for t in [
        "yolo-check-data",
        "yolo-train",
        "yolo-val",
        "yolo-export",
        "report",
    ] {
        assert_eq!(st(t), Status::Succeeded, "{t}\n{log}");
    }
    for t in ["fetch-source", "fetch-data", "build-image", "deploy"] {
        assert!(
            matches!(st(t), Status::NotRunLocally(_)),
            "{t}: {:?}",
            st(t)
        );
    }
    assert_eq!(result(&run, "yolo-check-data", "passed"), "true");
    assert_eq!(result(&run, "yolo-check-data", "images"), "24");
    let best = PathBuf::from(result(&run, "yolo-train", "best"));
    assert_eq!(
        best,
        ws["models"].join("runs/tiny/weights/best.safetensors")
    );
    assert!(best.exists());
    assert_eq!(result(&run, "yolo-train", "epochs"), "1");
    assert!(
        !ws["models"].join("runs/tiny2").exists(),
        "--auto-resume made a second run folder"
    );
    assert_eq!(result(&run, "yolo-val", "passed"), "true");
    assert!(result(&run, "yolo-val", "map50").parse::<f64>().is_ok());
    let onnx = ws["models"].join("export/tiny/model.onnx");
    assert!(
        std::fs::metadata(&onnx)
            .map(|m| m.len() > 1000)
            .unwrap_or(false),
        "no ONNX at {}",
        onnx.display()
    );
    assert!(ws["models"].join("val/tiny/metrics.json").exists());
    // build-image and deploy are not run here, so the report cannot say "deployed".
    assert_eq!(report_outcome(&run), "incomplete");

    // 2. A retried yolo-train TaskRun (same workspaces): its run is complete, so nothing is
    // retrained, the results are written again and no second run folder appears.
    let retry = local_run_single(&c, tmp.path(), &tiny_params("0"), &ws, "yolo-train");
    assert_eq!(
        retry.status["yolo-train"],
        Status::Succeeded,
        "{}",
        retry.log.join("\n")
    );
    assert_eq!(
        result(&retry, "yolo-train", "best"),
        best.display().to_string()
    );
    assert_eq!(result(&retry, "yolo-train", "epochs"), "1");
    assert!(
        retry.log.join("\n").contains("auto-resume"),
        "{}",
        retry.log.join("\n")
    );
    assert!(!ws["models"].join("runs/tiny2").exists());
    // A retry of a run that stopped before its last epoch resumes it: raise the saved epochs
    // (as if the run had been planned longer) and retry once more.
    let args_yaml = ws["models"].join("runs/tiny/args.yaml");
    let text = std::fs::read_to_string(&args_yaml).unwrap();
    assert!(text.contains("\nepochs: 1\n"), "{text}");
    std::fs::write(&args_yaml, text.replace("\nepochs: 1\n", "\nepochs: 2\n")).unwrap();
    let retry = local_run_single(&c, tmp.path(), &tiny_params("0"), &ws, "yolo-train");
    let log = retry.log.join("\n");
    assert_eq!(retry.status["yolo-train"], Status::Succeeded, "{log}");
    assert!(log.contains("resuming it"), "{log}");
    assert_eq!(result(&retry, "yolo-train", "epochs"), "2", "{log}");
    let csv = std::fs::read_to_string(ws["models"].join("runs/tiny/results.csv")).unwrap();
    assert_eq!(
        csv.lines().count(),
        3,
        "header and 2 epoch rows expected:\n{csv}"
    );
    assert!(!ws["models"].join("runs/tiny2").exists());

    // 3. A gate that cannot pass: val says passed=false (exit 3, the TaskRun still succeeds),
    // everything after the gate is skipped by `when`, and finally still reports.
    let tmp = tempfile::tempdir().unwrap();
    let ws = tiny_workspaces(tmp.path());
    let run = local_run(&c, tmp.path(), &tiny_params("0.99"), &ws);
    let log = run.log.join("\n");
    println!("{log}");
    for t in ["yolo-check-data", "yolo-train", "yolo-val", "report"] {
        assert_eq!(run.status[t], Status::Succeeded, "{t}\n{log}");
    }
    assert_eq!(result(&run, "yolo-val", "passed"), "false");
    // deploy's inputs (build-image's results) are missing as well, which Tekton checks first.
    assert!(
        matches!(&run.status["deploy"], Status::Skipped(_)),
        "deploy: {:?}",
        run.status["deploy"]
    );
    for t in ["yolo-export", "build-image"] {
        assert!(
            matches!(&run.status[t], Status::Skipped(why) if why.contains("when expressions evaluated to false")),
            "{t}: {:?}\n{log}",
            run.status[t]
        );
    }
    assert!(
        !ws["models"].join("export").exists(),
        "export ran behind a failed gate"
    );
    assert_eq!(report_outcome(&run), "gate-failed");

    // 4. Data that fails the check: training is skipped by `when`, val for lack of its input
    // (the `best` result), and finally still reports.
    let tmp = tempfile::tempdir().unwrap();
    let ws = tiny_workspaces(tmp.path());
    let images = ws["data"].join("datasets/shapes/images/train");
    assert!(images.is_dir(), "{}", images.display());
    std::fs::write(images.join("broken.png"), b"not a png").unwrap();
    let run = local_run(&c, tmp.path(), &tiny_params("0"), &ws);
    let log = run.log.join("\n");
    println!("{log}");
    assert_eq!(run.status["yolo-check-data"], Status::Succeeded, "{log}");
    assert_eq!(result(&run, "yolo-check-data", "passed"), "false");
    assert!(
        matches!(&run.status["yolo-train"], Status::Skipped(w) if w.contains("when")),
        "{log}"
    );
    assert!(
        matches!(&run.status["yolo-val"], Status::Skipped(w) if w.contains("results were missing")),
        "{log}"
    );
    assert!(
        matches!(&run.status["yolo-export"], Status::Skipped(_)),
        "{log}"
    );
    assert!(
        !ws["models"].join("runs").exists(),
        "training ran on rejected data"
    );
    assert_eq!(report_outcome(&run), "data-rejected");
}

/// One pipeline task alone, as a Tekton retry of its TaskRun would run it.
fn local_run_single(
    c: &Catalog,
    work: &Path,
    params: &[(&str, Val)],
    ws: &HashMap<String, PathBuf>,
    task: &str,
) -> LocalRun {
    let p = &c.pipelines["yolo-train-pipeline"];
    let mut pparams = task_defaults(p);
    for (k, v) in params {
        pparams.insert(k.to_string(), v.clone());
    }
    let pt = arr(&p["spec"]["tasks"])
        .iter()
        .find(|t| t["name"] == task)
        .unwrap();
    let mut run = LocalRun {
        status: BTreeMap::new(),
        results: BTreeMap::new(),
        log: Vec::new(),
    };
    // Its when input: the data check passed before.
    run.results.insert(
        "yolo-check-data".into(),
        [("passed".to_string(), "true".to_string())].into(),
    );
    run.status
        .insert("yolo-check-data".into(), Status::Succeeded);
    let status = run_pipeline_task(
        c,
        pt,
        &pparams,
        &mut run,
        &work.join("retry"),
        ws,
        false,
        &BTreeSet::new(),
    );
    run.status.insert(task.into(), status);
    run
}
