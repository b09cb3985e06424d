"""normlab's launchers over Hydra's own. Hydra finds plugins only in the `hydra_plugins`
namespace package (and runs each of its modules when it scans them), so they live here rather
than in `normlab`."""
