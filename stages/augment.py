"""DVC stage: grow the training split with label-preserving augmentations."""

from pathlib import Path

from glomx.data.store import ArrayStore
from glomx.params import load_params
from glomx.pipeline.augment import augment_store, grid_figure
from glomx.stage_main import stage_main
from glomx.tracking import stage_run

with stage_main("augment"):
    params = load_params()
    paths, config = params["paths"], params["augment"]
    src = ArrayStore(Path(paths["prepared"]) / "train")
    out = augment_store(src, paths["augmented"], config)  # workers fork before MLflow starts
    grid = Path(paths["plots"]) / "augment" / "grid.png"
    grid.parent.mkdir(parents=True, exist_ok=True)
    figure = grid_figure(out, **config["grid"])
    figure.savefig(grid, dpi=80)
    with stage_run("augment", config, src.data_kind) as run:
        run.log_metrics(
            {"originals": len(src), "images": len(out)}
            | {f"class_{c}": n for c, n in out.manifest["class_counts"].items()}
        )
        run.log_figure(figure, "augment/grid.png")
        run.log_dataset(out, "augmented")
    print(f"augment: {len(src)} → {len(out)} images {out.manifest['class_counts']}")
