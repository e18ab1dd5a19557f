#!/usr/bin/env python3
"""Renders the stategate Helm chart like `helm template` does, for the small
template subset the chart uses, so CI can validate the output without helm:

  {{ .Values.a.b }}  {{ .Release.Name }}  {{ .Release.Namespace }}
  {{ .Chart.Name }}  {{ .Chart.Version }}  {{ .Chart.AppVersion }}
  {{ X | quote }}    {{ X | b64enc | quote }}
  {{- if X }} ... {{- end }} (not nested)

Anything else is an error, so a template that outgrows this subset fails CI
instead of rendering wrongly.

  deploy/helm/render.py deploy/helm/stategate [--name NAME] [--set a.b=v ...] > out.yaml
"""

import argparse
import base64
import json
import pathlib
import re
import sys

import yaml

EXPR = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def fail(msg):
    sys.exit(f"render.py: {msg}")


def lookup(ctx, path):
    if not path.startswith("."):
        fail(f"unsupported expression {path!r}")
    cur = ctx
    for part in path[1:].split("."):
        if not isinstance(cur, dict) or part not in cur:
            fail(f"{path} is not defined")
        cur = cur[part]
    return cur


def text(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return ""
    return str(v)


def evaluate(ctx, expr):
    parts = [p.strip() for p in expr.split("|")]
    value = lookup(ctx, parts[0])
    out = text(value)
    for f in parts[1:]:
        if f == "quote":
            out = json.dumps(out)
        elif f == "b64enc":
            out = base64.b64encode(out.encode()).decode()
        else:
            fail(f"unsupported function {f!r}")
    return out


def render(template, ctx, name):
    out, pos, skipping, in_if = [], 0, False, False
    for m in EXPR.finditer(template):
        chunk = template[pos:m.start()]
        if m.group(1):
            chunk = chunk.rstrip()
        if not skipping:
            out.append(chunk)
        pos = m.end()
        if m.group(3):
            while pos < len(template) and template[pos] in " \t\r\n":
                pos += 1
        expr = m.group(2)
        if expr.startswith("if "):
            if in_if:
                fail(f"{name}: nested if is not supported")
            in_if = True
            value = lookup(ctx, expr[3:].strip())
            skipping = not value
        elif expr == "end":
            if not in_if:
                fail(f"{name}: end without if")
            in_if, skipping = False, False
        elif not skipping:
            out.append(evaluate(ctx, expr))
    if in_if:
        fail(f"{name}: if without end")
    out.append(template[pos:])
    return "".join(out)


def set_value(values, assignment):
    key, _, raw = assignment.partition("=")
    value = yaml.safe_load(raw) if raw else ""
    cur = values
    parts = key.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("chart")
    ap.add_argument("--name", default="release")
    ap.add_argument("--namespace", default="default")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    chart_dir = pathlib.Path(args.chart)
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    values = yaml.safe_load((chart_dir / "values.yaml").read_text()) or {}
    for s in args.set:
        set_value(values, s)
    ctx = {
        "Values": values,
        "Release": {"Name": args.name, "Namespace": args.namespace},
        "Chart": {"Name": chart["name"], "Version": chart["version"], "AppVersion": chart.get("appVersion", "")},
    }
    for path in sorted((chart_dir / "templates").glob("*.yaml")):
        body = render(path.read_text(), ctx, path.name).strip()
        if body:
            print(f"---\n# Source: {chart['name']}/templates/{path.name}\n{body}")


if __name__ == "__main__":
    main()
