"""Helpers of bench/tpch.sh: run a TPC-H job's query on a peer engine, summarise
Meltwater's print-sink output, and print the report.

  peer.py datafusion DATA JOB      run JOB's query in DataFusion (Python), in memory
  peer.py spark DATA JOB           run it in Spark local[2]
  peer.py print-result JOB         read a `meltwater run` with sink=print on stdin
  peer.py report RESULTS_DIR       the tables at the end of a run

The peers run the very query of the Meltwater job file: the SELECT after
`INSERT INTO result`, with the `--` comments removed. Each query prints one line of JSON:
{"rows": N, "checksum": S, "seconds": T, "setup": U}, where S is the sum of the job's
checksum column rounded to 2 decimals, T the time of the query alone and U the time before
it (imports, session start-up, table registration); Spark adds "jvm_cpu", the CPU seconds
of its JVM (a child that `time` does not see). peer.py uses only the standard library outside the engine commands, so
`report` and `print-result` run under any python3.
"""

import json
import os
import re
import statistics
import sys
import time
from decimal import Decimal

TABLES = ["lineitem", "orders", "customer", "supplier", "nation", "region", "part", "partsupp"]


def strip_comments(sql):
    return "\n".join(line.split("--", 1)[0] for line in sql.splitlines())


def query_of(job):
    """The SELECT that job inserts into `result`."""
    sql = strip_comments(open(job).read())
    m = re.search(r"INSERT\s+INTO\s+result\s+(.*?);?\s*$", sql, re.S | re.I)
    if not m:
        sys.exit(f"{job}: no INSERT INTO result")
    return m.group(1).strip()


def split_top_level(s):
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def checksum_index(job):
    """The position of the job's checksum column among the result table's columns."""
    text = open(job).read()
    name = re.search(r"checksum column[^:]*:\s*(\w+)", text).group(1)
    sql = strip_comments(text)
    m = re.search(r"CREATE\s+TABLE\s+result\s*\((.*?)\)\s*WITH", sql, re.S | re.I)
    columns = [c.split()[0].lower() for c in split_top_level(m.group(1))]
    return columns.index(name.lower())


def to_number(v):
    if v is None or v == "null":
        return Decimal(0)
    return Decimal(str(v))


def summary(rows, index, **timings):
    total = sum((to_number(r[index]) for r in rows), Decimal(0))
    out = {"rows": len(rows), "checksum": f"{round(total, 2):.2f}"}
    out.update({k: round(v, 3) for k, v in timings.items()})
    print(json.dumps(out))


def process_cpu(pid):
    """User + system seconds of process pid and its waited-for children."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def run_datafusion(data, job):
    begin = time.perf_counter()
    from datafusion import SessionContext

    ctx = SessionContext()
    for t in TABLES:
        ctx.register_parquet(t, os.path.join(data, t) + "/")
    query = query_of(job)
    start = time.perf_counter()
    batches = ctx.sql(query).collect()
    seconds = time.perf_counter() - start
    rows = []
    for b in batches:
        rows.extend(zip(*[c.to_pylist() for c in b.columns]))
    summary(rows, checksum_index(job), seconds=seconds, setup=start - begin)


def run_spark(data, job):
    begin = time.perf_counter()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master("local[2]")
        .appName("meltwater-tpch")
        .config("spark.driver.memory", os.environ.get("SPARK_DRIVER_MEMORY", "4g"))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    for t in TABLES:
        spark.read.parquet(os.path.join(data, t)).createOrReplaceTempView(t)
    query = query_of(job)
    start = time.perf_counter()
    rows = spark.sql(query).collect()
    seconds = time.perf_counter() - start
    jvm = spark.sparkContext._gateway.proc.pid
    jvm_cpu = process_cpu(jvm)
    summary([tuple(r) for r in rows], checksum_index(job), seconds=seconds, setup=start - begin, jvm_cpu=jvm_cpu)
    spark.stop()


def print_result(job):
    """Rows of a print sink (`+I[a, b, c]`) read from stdin."""
    rows = []
    for line in sys.stdin:
        line = line.rstrip("\n")
        if line.startswith("+I[") and line.endswith("]"):
            rows.append(line[3:-1].split(", "))
    summary(rows, checksum_index(job))


# --- the report -----------------------------------------------------------------------

ENGINES = [
    ("staged", "meltwater staged"),
    ("pipelined", "meltwater --pipelined"),
    ("memlimit", "meltwater --memory-limit"),
    ("datafusion", "datafusion-python"),
    ("spark", "spark local[2]"),
]


def read_tsv(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.rstrip("\n").split("\t") for line in f if line.strip()]


def table(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    fmt = lambda r: "  ".join(
        (str(c).ljust(w) if i == 0 else str(c).rjust(w)) for i, (c, w) in enumerate(zip(r, widths))
    )
    print(fmt(header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(fmt(r))


def human(n):
    n = float(n)
    for unit in ["B", "KiB", "MiB", "GiB", "TiB"]:
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def report(results):
    meta = dict(read_tsv(os.path.join(results, "meta.tsv")))
    stat = meta.get("stat", "median")
    pick = min if stat == "best" else statistics.median
    times, rss, cpu, failed, other = {}, {}, {}, {}, []
    for q, engine, run, secs, maxrss, status, cpus, others in read_tsv(os.path.join(results, "times.tsv")):
        other.append((float(others), float(secs)))
        if status == "ok":
            times.setdefault((q, engine), []).append(float(secs))
            if maxrss:
                rss.setdefault((q, engine), []).append(int(maxrss))
            if cpus:
                cpu.setdefault((q, engine), []).append(float(cpus) / max(float(secs), 1e-9))
        else:
            failed[(q, engine)] = status
    inproc, setup = {}, {}
    for q, engine, run, secs, before in read_tsv(os.path.join(results, "inproc.tsv")):
        inproc.setdefault((q, engine), []).append(float(secs))
        setup.setdefault((q, engine), []).append(float(before))
    queries = meta.get("queries", "").split()
    engines = [e for e in ENGINES if e[0] in meta.get("engines", "").split()]

    def t(q, e):
        v = times.get((q, e))
        return pick(v) if v and (q, e) not in failed else None

    def cell(q, e):
        if (q, e) in failed:
            return "FAIL"
        v = t(q, e)
        return f"{v:.2f}" if v is not None else "-"

    print()
    print(
        f"TPC-H SF{meta.get('sf')} ({human(meta.get('data_bytes', 0))} of Parquet), "
        f"{stat} of {meta.get('runs')} runs, wall seconds of the whole command "
        f"(memory limit {human(meta.get('memory_limit', 0))})"
    )
    table(["query"] + [e[1] for e in engines], [[q] + [cell(q, e[0]) for e in engines] for q in queries])
    if other:
        busiest = max(o / s for o, s in other)
        total = sum(o for o, _ in other)
        print(
            f"other processes (and steal) used {total:.1f} CPU seconds during the kept runs, at most "
            f"{busiest:.2f} cores on average during one run (near 0: the times are clean)"
        )

    def ratio(q, a, b):
        x, y = t(q, a), t(q, b)
        return f"{x / y:.2f}" if x is not None and y else "-"

    pairs = [
        ("staged/pipelined", "staged", "pipelined"),
        ("staged/datafusion-py", "staged", "datafusion"),
        ("staged/spark", "staged", "spark"),
        ("memlimit/staged", "memlimit", "staged"),
    ]
    names = [e[0] for e in engines]
    pairs = [p for p in pairs if p[1] in names and p[2] in names]
    if pairs:
        print()
        print("ratios (below 1: the first is faster)")
        table(["query"] + [p[0] for p in pairs], [[q] + [ratio(q, p[1], p[2]) for p in pairs] for q in queries])

    peers = [e for e in engines if e[0] in ("datafusion", "spark")]
    if peers:
        print()
        print(f"peers, in process ({stat}): the query alone / the set-up before it (imports, start-up, registering the tables)")

        def split(q, e):
            if not inproc.get((q, e)):
                return "-"
            return f"{pick(inproc[(q, e)]):.2f} / {pick(setup[(q, e)]):.2f}"

        table(["query"] + [e[1] for e in peers], [[q] + [split(q, e[0]) for e in peers] for q in queries])

    print()
    print(f"cores used: CPU seconds / wall seconds of the command ({stat})")
    table(
        ["query"] + [e[1] for e in engines],
        [[q] + [f"{pick(cpu[(q, e[0])]):.2f}" if cpu.get((q, e[0])) else "-" for e in engines] for q in queries],
    )

    spills = {}
    for q, run, spilled in read_tsv(os.path.join(results, "spill.tsv")):
        spills.setdefault(q, []).append(spilled)
    if "memlimit" in names:
        print()
        print("memory-limited runs: spilled per run (Meltwater's 'spilled X to disk' line), max RSS (largest run)")
        rows = []
        for q in queries:
            r = [q, ", ".join(spills.get(q, [])) or "-"]
            for e in ("staged", "memlimit"):
                v = rss.get((q, e))
                r.append(human(max(v) * 1024) if v else "-")
            rows.append(r)
        table(["query", "spilled", "max RSS staged", "max RSS memlimit"], rows)
        for q in queries:
            path = os.path.join(results, f"stages-{q}-memlimit.txt")
            if os.path.exists(path) and os.path.getsize(path):
                print()
                print(f"{q}, memory-limited: Meltwater's stage table (last run)")
                print(open(path).read().rstrip())

    verify = {}
    for q, engine, rows, checksum in read_tsv(os.path.join(results, "verify.tsv")):
        verify[(q, engine)] = (rows, checksum)
    if verify:
        print()
        print("results: rows / checksum of the checksum column (sum, 2 decimals); ref = datafusion-python")
        header, out, disagree = ["query"], [], []
        vengines = [e for e in ENGINES if any(k[1] == e[0] for k in verify)]
        header += [e[1] for e in vengines] + ["agree"]
        for q in queries:
            row = [q]
            ref = verify.get((q, "datafusion"))
            ok = True
            for e in vengines:
                v = verify.get((q, e[0]))
                row.append(f"{v[0]} / {v[1]}" if v else "-")
                if v and ref and not same(v, ref):
                    ok = False
                    disagree.append(f"{q} {e[1]}")
            row.append("yes" if ok and ref else ("-" if not ref else "NO"))
            out.append(row)
        table(header, out)
        if disagree:
            print("DISAGREE: " + "; ".join(disagree))

    errors = read_tsv(os.path.join(results, "errors.tsv"))
    if errors:
        print()
        print("failures (first failing run of each; full output under " + results + "/logs):")
        for q, engine, msg in errors:
            print(f"  {q} {engine}: {msg}")


def same(a, b):
    if a[0] != b[0]:
        return False
    try:
        x, y = Decimal(a[1]), Decimal(b[1])
    except Exception:
        return a[1] == b[1]
    return abs(x - y) <= Decimal("0.01") + abs(y) * Decimal("1e-12")


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "datafusion":
        run_datafusion(sys.argv[2], sys.argv[3])
    elif cmd == "spark":
        run_spark(sys.argv[2], sys.argv[3])
    elif cmd == "print-result":
        print_result(sys.argv[2])
    elif cmd == "report":
        report(sys.argv[2])
    elif cmd == "query":
        print(query_of(sys.argv[2]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
