"""Grid Engine (Son of Grid Engine, Univa/Altair GE): qsub/qstat/qdel (client) and the batch
script's ``#$`` directives (batch)."""
