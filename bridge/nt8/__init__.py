"""NT8 as a host: building and exporting the NinjaScript with Mono's mcs, installing it into NT8's own
folder, the check that the strategy uses only documented NT8 members, the pythonnet host of the NT8
simulator, the Python NT8 client and its fill model, and playback of NT8 exports through a sidecar.

May import: everything below it, ``bridge.transport`` included (a playback starts its sidecar the
way a user does). Never the CLI.
"""
