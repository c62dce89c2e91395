#!/bin/bash
# hpc-batch Galaxy-script mode, shared file system: run Galaxy's own job script in the
# job's working directory. The pilot sets CUDA_VISIBLE_DEVICES and HPC_BATCH_SLOT.
cd <<workdir>> || {
    echo "hpc-batch: the job's working directory is not visible on $(hostname):" \
        "Galaxy-script mode needs Galaxy's job_working_directory on a shared file system" \
        "(or the destination param placement: staged)" >&2
    exit 1
}
printf 'slot=%s\ngpu=%s\nhost=%s\n' "${HPC_BATCH_SLOT:-}" "${CUDA_VISIBLE_DEVICES:-}" \
    "$(hostname)" > hpc_batch_slot.txt
/bin/bash <<job_script>>
