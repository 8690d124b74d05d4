"""Code that runs on the compute node, in the job or inside the gateway: stdlib and Jupyter only.

These files are shipped into the batch script as text; nothing here imports jlabgw.
"""
