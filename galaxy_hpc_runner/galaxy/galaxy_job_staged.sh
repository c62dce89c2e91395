#!/bin/bash
# hpc-batch Galaxy-script mode, staged placement. Galaxy's job directory arrives as
# <<gx_bundle>> (the datasets beside it), its paths rewritten for W/jobs/KEY/galaxy;
# what the job wrote goes back as <<gx_return>>. The pilot sets CUDA_VISIBLE_DEVICES
# and HPC_BATCH_SLOT. The exit code is 0 once the archive is written: Galaxy reads the
# tool's own from the job directory (galaxy_ID.ec), as it does on a shared file system.
cd <<workspace>> || exit 1
case "${PWD##*/}" in  # this attempt's directory, W/jobs/KEY/attempt-N
    attempt-*) job_dir="${PWD%/*}/galaxy" ;;
    *) job_dir="$PWD/galaxy" ;;
esac
rm -rf "$job_dir" .hpc-batch-return.part && mkdir "$job_dir" || exit 1
tar -xf <<gx_bundle>> -C "$job_dir" || {
    echo "hpc-batch: cannot unpack Galaxy's job directory into $job_dir" >&2
    exit 1
}
printf 'slot=%s\ngpu=%s\nhost=%s\n' "${HPC_BATCH_SLOT:-}" "${CUDA_VISIBLE_DEVICES:-}" \
    "$(hostname)" > "$job_dir/hpc_batch_slot.txt"
(cd "$job_dir" && /bin/bash <<job_script>>)
echo "hpc-batch: Galaxy's job script ended with exit code $?"
tar -cf .hpc-batch-return.part -C "$job_dir" --exclude=./inputs --exclude=./tool_files \
    --exclude=./configs --exclude=./tmp --exclude=./home . || exit 1
mv .hpc-batch-return.part <<gx_return>>
