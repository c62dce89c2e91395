#!/bin/bash
# The seed's sample template: a singularity container that takes a level parameter,
# one input and two outputs.
singularity run --nv --bind <<workspace>>:/mnt <<containers>>/my_container.sif --level=<<level>> /mnt/<<input>> /mnt/<<txt_output>> /mnt/<<json_output>>
