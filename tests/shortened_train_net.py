"""tools/train_net.py on shortened datasets (catalog_helpers.shortened), in this process and in
every rank detectron2's ``launch`` spawns, for tests that start train_net as a subprocess:
``VCM_TEST_SHORTENED="name=videos[,name=videos...]" python tests/shortened_train_net.py ARGS``."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "tools")]

import train_net  # noqa: E402  (spawned ranks unpickle train_net.main, importable from here)
from catalog_helpers import shortened  # noqa: E402

# At module level: spawned ranks re-run this file as __mp_main__, not its __main__ block. The
# context stays referenced (a collected generator would run its exit and restore the catalog).
_SPEC = os.environ.get("VCM_TEST_SHORTENED", "")
_SHORTENED = shortened({name: int(videos) for name, videos in
                        (item.split("=") for item in _SPEC.split(",") if item)})
_SHORTENED.__enter__()

if __name__ == "__main__":
    args = train_net.default_argument_parser().parse_args()
    train_net.launch(train_net.main, args.num_gpus, num_machines=args.num_machines,
                     machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
