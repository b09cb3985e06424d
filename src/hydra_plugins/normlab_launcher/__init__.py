"""normlab's submitit launchers. Hydra loads launcher plugins only from the `hydra_plugins`
namespace package, so they live here rather than in `normlab`."""
