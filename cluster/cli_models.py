"""Command line, the commands that write or read model files: the built-in model, its
shapes as users download them, its evaluation, and the MTP layer out of a checkpoint."""

import argparse
import json

MTP_DISTILL_STEPS = 300  # the recipe's MTP distillation phase (fixture/mtp_distill.py)


def _fixture_model(args) -> int:
    if args.layers is not None:
        from .fixture.deepen import deepen
        from .model_store import TRAINED

        out = deepen(TRAINED, args.out_dir, args.layers, seed=args.seed)
        print(f"wrote {out}: the trained built-in model with {args.layers} decoder layers")
        return 0
    if args.distill_mtp:
        from .launch.blas import reexec_with_openblas

        reexec_with_openblas()
        import shutil

        from .fixture.mtp_distill import distill_model_dir

        shutil.copytree(args.distill_mtp, args.out_dir)
        result = distill_model_dir(args.out_dir, seed=args.seed, steps=args.mtp_distill_steps)
        print(f"wrote {args.out_dir}: {args.distill_mtp} with its MTP layer distilled; agreement "
              f"with the main model (first, second draft) {result['mtp_agreement_before']} -> "
              f"{result['mtp_agreement_after']}")  # fmt: skip
        return 0
    if args.train:
        from .launch.blas import reexec_with_openblas

        reexec_with_openblas()
        import logging
        import os

        from .fixture.agent_eval import write_eval
        from .fixture.data_parallel import RANK_ENV, joined, launch, relaunch_argv
        from .fixture.train import train

        if args.ranks > 1 and RANK_ENV not in os.environ:  # this command again, as the ranks
            return launch(args.ranks, relaunch_argv())
        ranks = joined()
        if not ranks.lead:  # rank 0 logs and writes
            logging.getLogger().setLevel(logging.WARNING)
        out, metrics = train(args.out_dir, steps=args.steps, seed=args.seed,
                             induction=args.induction, call_warmup=args.call_warmup,
                             every_token=args.every_token, agent_share=args.agent_share,
                             length=args.length, batch=args.batch, ranks=ranks,
                             mtp_distill_steps=args.mtp_distill_steps)  # fmt: skip
        if not ranks.lead:
            return 0
        print(
            f"wrote {out}: held-out loss {metrics['main_loss']:.3f}, MTP {metrics['mtp_loss']:.3f}"
        )
        _print_eval(write_eval(out))
        return 0
    from .fixture.model import write_fixture

    out = write_fixture(args.out_dir, seed=args.seed)
    print(f"wrote {out}")
    return 0


def _fixture_checkpoint(args) -> int:
    from pathlib import Path

    from .fixture.shapes import write_hf_mtp, write_hf_sharded, write_mlx_community
    from .model_store import TRAINED

    src = Path(args.source or TRAINED)
    out = Path(args.out)
    if args.shape == "hf-sharded":
        write_hf_sharded(src, out, args.shards)
        print(f"wrote {out}: {src.name} in {args.shards} Hugging Face shards with an index")
        return 0
    if args.shape == "hf-mtp":
        write_hf_mtp(src, out, args.fp8)
        form = "FP8 e4m3 linear weights with 128 x 128 block scales" if args.fp8 else "bf16"
        print(f"wrote {out}: the MTP layer of {src.name} in Hugging Face's layout ({form})")
        return 0
    write_mlx_community(src, out, args.bits, args.group_size, args.shards)
    print(f"wrote {out}: {src.name} as mlx-community ships GLM-5 ({args.bits}-bit, group "
          f"{args.group_size}, bf16, {args.shards} shards, no MTP layer)")  # fmt: skip
    return 0


def _extract_mtp(args) -> int:
    from .models.extract_mtp import extract_mtp

    out, shards = extract_mtp(args.hf_dir, args.out)
    print(f"wrote {out} (read {len(shards)} shard(s): {', '.join(shards)})")
    return 0


def _shard_checkpoint(args) -> int:
    from .models.tp_shards import shard_checkpoint

    manifest = shard_checkpoint(args.src, args.out, args.tp)
    sizes = ", ".join(f"rank {r}: {b / 1e6:,.1f} MB" for r, b in enumerate(manifest.rank_bytes))
    print(f"wrote {args.out}: {args.src} split for TP {args.tp} ({sizes}); serve it on "
          f"replicas of {args.tp} nodes, each node needs only its rank-N/ directory")  # fmt: skip
    return 0


def _print_eval(result: dict) -> None:
    for label, r in (("served, tool-call grammar on", result),
                     ("the bare model, no grammar", result["without_grammar"])):  # fmt: skip
        print(
            f"held-out tool calls, {label}: {r['tool_call_accuracy_thinking_off']:.1%} "
            f"(thinking off), {r['tool_call_accuracy_thinking_on']:.1%} (thinking on); "
            f"thinking closed: {r['thinking_closed']:.1%} of {result['held_out_requests']}"
        )
    for mode, probe in result["teacher_forced"].items():
        print(f"teacher-forced, {mode.replace('_', ' ')}: {probe}")


def _fixture_eval(args) -> int:
    from .launch.blas import reexec_with_openblas

    reexec_with_openblas()
    if args.long:
        from pathlib import Path

        from .fixture.long_eval import position_losses

        result = position_losses(args.model_dir)
        (Path(args.model_dir) / "long_eval.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result))
        return 0
    from .fixture.agent_eval import write_eval

    _print_eval(write_eval(args.model_dir, args.n, args.temperature, args.top_p))
    return 0


def add_model_file_commands(sub) -> None:
    p = sub.add_parser("fixture-model", help="write the small GLM-5-architecture model")
    p.add_argument("out_dir", help="directory to write")
    p.add_argument("--seed", type=int, default=0, help="weights seed (default 0)")
    p.add_argument(
        "--train",
        action="store_true",
        help="train it on the standard library and agent conversations",
    )
    p.add_argument("--steps", type=int, default=1100, help="training steps (default 1100)")
    p.add_argument(
        "--induction",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --train: plant a copy (induction) circuit first (default: on)",
    )
    p.add_argument(
        "--call-warmup",
        type=int,
        default=300,
        help="with --train: the first N steps on bare conversations (no system turn, no tools "
        "block), call-dense 256-token windows (default 300)",
    )
    p.add_argument(
        "--every-token",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --train: conversations' loss on every token, not only the assistant's "
        "(default: on)",
    )
    p.add_argument(
        "--agent-share",
        type=float,
        help="with --train: share of each batch's windows that are conversations (the rest code)",
    )
    p.add_argument(
        "--length", type=int, default=640, help="with --train: window length (default 640)"
    )
    p.add_argument("--batch", type=int, default=6, help="with --train: windows a step (default 6)")
    p.add_argument(
        "--ranks",
        type=int,
        default=2,
        help="with --train: each step's windows split over this many processes on this machine, "
        "a core each, their gradients averaged over MLX's ring (default 2; 1: one process)",
    )
    p.add_argument(
        "--mtp-distill-steps",
        type=int,
        default=MTP_DISTILL_STEPS,
        help="with --train or --distill-mtp: steps of the last phase, the MTP layer learning "
        f"the main model's own choices (default {MTP_DISTILL_STEPS}; 0: none)",
    )
    p.add_argument(
        "--distill-mtp",
        metavar="SRC",
        help="copy the trained model SRC to OUT_DIR and run only the recipe's last phase on it "
        "(the MTP layer learns the main model's choices; the main model is unchanged)",
    )
    p.add_argument(
        "--layers",
        type=int,
        help="write the trained model with this many decoder layers, the added ones adding "
        "cost but not output (a benchmark model in GLM-5's cost ratios)",
    )
    p.set_defaults(func=_fixture_model)

    p = sub.add_parser(
        "fixture-checkpoint", help="the built-in model in a shape users download (for tests)"
    )
    p.add_argument("out", help="directory (mlx-community) or .safetensors file (hf-mtp)")
    p.add_argument(
        "--shape",
        choices=["mlx-community", "hf-mtp", "hf-sharded"],
        default="mlx-community",
        help="mlx-community: quantized, bf16, sharded, MTP dropped; hf-mtp: the MTP layer as "
        "Hugging Face's GLM-5 shards carry it; hf-sharded: the whole checkpoint in shards",
    )
    p.add_argument("--source", help="checkpoint to convert (default: the built-in model)")
    p.add_argument("--bits", type=int, choices=[4, 8], default=4, help="quantization bits")
    p.add_argument("--group-size", type=int, choices=[32, 64], default=64, help="group size")
    p.add_argument("--shards", type=int, default=2, help="safetensors files to split into")
    p.add_argument(
        "--fp8", action="store_true", help="hf-mtp: FP8 with block scales, as GLM-5-FP8 ships it"
    )
    p.set_defaults(func=_fixture_checkpoint)

    p = sub.add_parser(
        "extract-mtp", help="copy GLM-5's MTP layer out of a Hugging Face checkpoint"
    )
    p.add_argument("hf_dir", help="Hugging Face checkpoint directory (config.json, shards, index)")
    p.add_argument("out", help="safetensors file to write (serve --mtp-weights OUT)")
    p.set_defaults(func=_extract_mtp)

    p = sub.add_parser(
        "shard-checkpoint",
        help="split a checkpoint per tensor-parallel rank (each node stores and reads its shard)",
    )
    p.add_argument("src", help="checkpoint directory (as mlx-lm loads it)")
    p.add_argument("out", help="directory to write: rank-0/ ... rank-N-1/, config, tokenizer")
    p.add_argument("--tp", type=int, required=True, help="tensor-parallel degree of the replicas")
    p.set_defaults(func=_shard_checkpoint)

    p = sub.add_parser("fixture-eval", help="held-out tool-call and thinking figures of a model")
    p.add_argument("model_dir", help="a model in the built-in model's format")
    p.add_argument("--n", type=int, default=200, help="held-out requests (default 200)")
    p.add_argument(
        "--long", action="store_true", help="held-out code loss by position, sparse and dense"
    )
    p.add_argument(
        "--temperature", type=float, default=0.0,
        help="sample replies at this temperature, seeded (default 0: greedy); written to "
        "agent_eval_sampled.json",
    )  # fmt: skip
    p.add_argument("--top-p", type=float, default=1.0, help="with --temperature (default 1)")
    p.set_defaults(func=_fixture_eval)
