"""Load a config file in Python and look at what it declares, without a daemon.

Run:  python examples/python/config_in_code.py examples/slide.conf
"""
import sys

import etmem


def main(path: str) -> int:
    try:
        cfg = etmem.load_config(path)
    except etmem.ConfigError as err:
        # err.path, err.line, err.group and err.key say where; str(err) says it all.
        print(err, file=sys.stderr)
        return 1
    for project in cfg.projects:
        print(f"project {project.name}: loop={project.loop} interval={project.interval}s sleep={project.sleep}s")
    for engine in cfg.engines:
        print(f"engine {engine.name} in project {engine.project}")
    for task in cfg.tasks:
        print(f"task {task.name}: {task.common.type}={task.common.value}, engine {task.engine}, keys {task.keys}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "examples/slide.conf"))
