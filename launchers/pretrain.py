"""Pre-train with DeepSpeed: `deepspeed launchers/pretrain.py --deepspeed_config ds_configs/z2.json [flags]`.
A shim over megadna.cli.pretrain (`--help` lists the flags, exit codes and multi-node commands)."""

from megadna.cli.pretrain import main

if __name__ == "__main__":
    raise SystemExit(main())
