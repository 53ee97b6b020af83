#!/bin/bash
# One `soraflow run --profile gpu` on the lent GPU machine (no network there): unpack the carried packages
# (kfp, torchx, PyAV and their pure-Python needs, from a folder named by $1), run the whole DAG, gather the
# record into $OUT. Usage: scripts/device_gpu_run.sh PKG_DIR TIME_LIMIT_S [extra `soraflow run` args...]
set -u
PKG=$1; LIMIT=$2; shift 2
mkdir -p /tmp/site
python3 - "$PKG" <<'PY'
import sys, zipfile, glob
for z in glob.glob(sys.argv[1] + "/*.zip") + glob.glob(sys.argv[1] + "/*.whl"):
    zipfile.ZipFile(z).extractall("/tmp/site")
PY
export PYTHONPATH=/tmp/site:$PWD SORAFLOW_CACHE=/tmp/sfcache PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1
python3 -c "import torch, kfp, kfp.local, kfp.kubernetes, av, torchx.runner, soraflow.pipelines.dag, soraflow.training.launch; print('torch', torch.__version__, torch.cuda.get_device_name(), 'kfp', kfp.__version__, 'av', av.__version__)" || exit 3
nproc; free -g | head -2; df -h /tmp | tail -1
RUN=/tmp/gpu-run
s=$SECONDS
timeout "$LIMIT" python3 -m soraflow.cli run --profile gpu --out-dir $RUN "$@" > $OUT/run.log 2>&1
echo "rc=$? wall=$((SECONDS - s)) s" | tee -a $OUT/run.log
grep -v "^ *\[KFP\|^ *{\|^ *}\|^ *\"" $OUT/run.log | tail -40
# a failed stage: its worker's own traceback (torchrun's summary hides it)
for f in $(find $RUN/runs -path "*torchx-logs*" -name stderr.log -path "*trainer/0/*" | xargs grep -l -s Traceback); do
    echo "== $f"; grep -v Warning "$f" | tail -25; done
python3 benchmarks/demo_gpu_profile.py $RUN --out $OUT/record.json --png $OUT/curves.png --log $OUT/run.log \
    --command "python -m soraflow.cli run --profile gpu --out-dir RUN $*"
cd $RUN 2>/dev/null && tar czf $OUT/report.tgz report.html report.md plots thumbs 2>/dev/null
ls -la $OUT
