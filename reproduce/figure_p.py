"""The spatial-attention dropout ratio P: DropMAE pre-trained with P in {0, 0.05, 0.1, 0.2, 0.3, 0.4}.

P = 0 is TwinMAE; P = 0.1 is DropMAE's default, the best on both tasks in the paper (its figure;
specs/paper.md gives no numbers, so every paper cell is "-"). Each backbone is fine-tuned and
scored exactly as in Table 1 (reproduce/table1.py's stages and recipes): DropTrack on GOT-10k
(AO, SR0.5, SR0.75; ours on val) and DropSeg on DAVIS-17 val (J&F, J, F). The P = 0 and P = 0.1
backbones are the pipeline's shared TwinMAE and DropMAE ones (Table 1's); the other four are
pre-trained here with the same recipe.

Written to the run folder besides the table (figure_p.txt / .csv / .md): figure_p.json (per P
the mean, std and per-seed values of every metric), figure_p_points.csv (one line per P) and,
when matplotlib is importable (an optional extra, never required), figure_p.png: GOT-10k AO
and DAVIS-17 J&F against P.

Hardware and time of the full run: six K400 pre-trainings of 400 epochs (~21 h each on 64
A100s, Table 1's 400-epoch rows; the paper does not say which schedule its ablation used), plus
per backbone the GOT-10k recipe (~6 h on 4 A100s) and DropSeg (210k iterations on 8 GPUs).

Commands:
    make figure-p                    # tiny synthetic scale, 15:31 measured idle after make table1
    make figure-p SMOKE=1            # smoke scale (the test suite's)
    NPROC=8 python -m reproduce.figure_p --k400 /data/k400/train --got10k /data/got10k \\
        --davis /data/DAVIS2017 --ytvos /data/YouTubeVOS2019 --out runs/figure_p

Tiny scale: the shared tiny pre-training recipe (synthetic K400-layout clips) for every P, and
Table 1's tiny fine-tuning; the numbers are labelled tiny scale wherever printed. With a few
synthetic val sequences, differences of several points between P values are noise.
"""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reproduce import pipeline as pl  # noqa: E402
from reproduce import table1  # noqa: E402

PS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4)
EPOCHS_FULL = 400                          # the ablation's schedule is not given; Table 1's shortest
METRICS = ("AO", "SR0.5", "SR0.75", "J&F", "J", "F")


def row_id(P: float) -> str:
    return f"p{P:g}".replace(".", "")     # p0, p005, p01, ...


def label(P: float) -> str:
    return "TwinMAE (P = 0)" if P == 0 else f"DropMAE P = {P:g}"


ROWS = {"full": [pl.pretrained(row_id(P), label(P), "k400", epochs=EPOCHS_FULL, P=P) for P in PS],
        "tiny": [pl.pretrained(row_id(P), label(P), "k400", P=P) for P in PS]}
P_OF = {row_id(P): P for P in PS}

STAGES = [s for s in table1.STAGES if s.name != "vot_test"]      # the GOT-10k test zip: Table 1's
COLUMNS = [pl.Column(m, "vot_val") for m in METRICS[:3]] + [pl.Column(m, "vos_val") for m in METRICS[3:]]

TABLE = pl.Table(
    name="figure_p", title="Figure: the spatial-attention dropout ratio P (GOT-10k val, DAVIS-17 val)",
    paper={}, columns=COLUMNS, rows=ROWS, stages=STAGES, recipes=table1.FINETUNE_RECIPE,
    datasets={"k400": "Kinetics-400 training videos", "k400_val": "Kinetics-400 validation videos (collapse check)",
              "got10k": "GOT-10k root", "davis": "DAVIS-2017 trainval root", "ytvos": "YouTube-VOS 2019 root"},
    needs_full=("k400", "got10k", "davis", "ytvos"), synthetic=table1.make_synthetic_data, heldout="k400_val",
    smoke_rows=("p005",),           # P = 0 and 0.1 would redo Table 1's TwinMAE / DropMAE rows
    share_data=True,                # the same data as table4 (table1.make_synthetic_data, its recipes)
    notes=("paper: a figure without printed numbers (P = 0.1 best on both tasks), so paper cells are '-'",),
    description=__doc__)


# --------------------------------------------------------------------------------------------
# The figure's points: JSON + CSV always, a PNG when matplotlib is there
# --------------------------------------------------------------------------------------------

def points(run: pl.TableRun, rows: list) -> list[dict]:
    """One dict per P: {P, row, <metric>: mean over seeds or None, <metric>_std, <metric>_seeds}."""
    out = []
    for row in rows:
        point = {"P": P_OF[row.id], "row": row.id}
        for m in METRICS:
            stage = "vot_val" if m in METRICS[:3] else "vos_val"
            vals = [(run.seed_run(s).result(row, stage) or {}).get(m) for s in run.seeds]
            point[m], point[f"{m}_std"] = pl._mean_std(vals)
            point[f"{m}_seeds"] = vals
        out.append(point)
    return out


def points_csv(pts: list[dict], scale: str) -> str:
    buf = io.StringIO()
    if pl.BANNERS.get(scale):
        buf.write(f"# {pl.BANNERS[scale]}\n")
    fields = ["P"] + [k for m in METRICS for k in (m, f"{m}_std")]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(pts)
    return buf.getvalue()


def plot(pts: list[dict], path: Path, scale: str) -> bool:
    """figure_p.png (GOT-10k AO and DAVIS-17 J&F against P) if matplotlib imports; -> written."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for m, marker in (("AO", "o"), ("J&F", "s")):
        xs = [p["P"] for p in pts if p[m] is not None]
        ax.plot(xs, [p[m] for p in pts if p[m] is not None], marker=marker,
                label="GOT-10k AO (val)" if m == "AO" else "DAVIS-17 J&F (val)")
    ax.set_xlabel("spatial-attention dropout ratio P")
    ax.set_ylabel("score")
    ax.set_xticks(list(PS))
    ax.legend()
    ax.set_title(("[" + pl.BANNERS[scale].lower() + "]\n") if pl.BANNERS.get(scale) else "", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_points(run: pl.TableRun, rows: list) -> list[dict]:
    pts = points(run, rows)
    pl.write_json(run.out / "figure_p.json", {"scale": run.scale, "banner": pl.BANNERS.get(run.scale, ""),
                                              "seeds": list(run.seeds), "points": pts})
    (run.out / "figure_p_points.csv").write_text(points_csv(pts, run.scale))
    png = plot(pts, run.out / "figure_p.png", run.scale)
    run.console.say(f"wrote {run.out / 'figure_p.json'}, figure_p_points.csv"
                    + (", figure_p.png" if png else " (no PNG: matplotlib is not installed)"))
    return pts


def main(argv=None) -> int:
    args = pl.build_parser(TABLE).parse_args(argv)
    run, rows = pl.make_run(TABLE, args)
    code = pl.run_table(run, rows)
    if run.stop_after is None and run.dist["node_rank"] == 0:
        write_points(run, rows)
    return code


if __name__ == "__main__":
    sys.exit(main())
