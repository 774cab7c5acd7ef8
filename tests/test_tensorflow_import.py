"""The quiet TensorFlow import, against a stand-in ``tensorflow`` package.

The stand-in writes to file descriptor 2 the way TensorFlow's C++ libraries
do while they load, so these checks hold on any CPU and TensorFlow build.
"""

import os
import subprocess
import sys
import textwrap

from helpers import REPO

_MODULE = os.path.join(REPO, 'sa_reid_jax', 'datasets', 'tensorflow_cpu.py')
# Loads the module file alone (not the package, which would pull in JAX).
_IMPORT = textwrap.dedent(f"""
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location('tensorflow_cpu', {_MODULE!r})
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    print('imported', module.tf.STAND_IN)
    sys.stderr.write('after the import\\n')
""")
_NOISE = ('WARNING: All log messages before absl::InitializeLog() is called '
          'are written to STDERR\\n'
          'I0000 00:00:1764000000.000000  123 port.cc:153] oneDNN custom '
          'operations are on.\\n')


def _import_stand_in(tmp_path, body: str, **variables: str):
  package = tmp_path / 'tensorflow'
  package.mkdir()
  (package / '__init__.py').write_text(
      'import os\nSTAND_IN = True\n' + textwrap.dedent(body))
  env = {name: value for name, value in os.environ.items()
         if name != 'TF_CPP_MIN_LOG_LEVEL'}
  env.update(PYTHONPATH=str(tmp_path), **variables)
  return subprocess.run([sys.executable, '-c', _IMPORT], env=env,
                        capture_output=True, text=True, timeout=60)


def test_load_time_lines_are_hidden_and_stderr_comes_back(tmp_path):
  result = _import_stand_in(tmp_path, f"os.write(2, b'{_NOISE}')\n")
  assert result.returncode == 0, result.stderr
  assert result.stdout == 'imported True\n'
  assert result.stderr == 'after the import\n'


def test_a_failed_import_shows_what_was_written(tmp_path):
  result = _import_stand_in(tmp_path, f"""
      os.write(2, b'{_NOISE}')
      os.write(2, b'E0000 loader.cc:1] libtensorflow_framework.so.2: '
                  b'cannot open shared object file\\n')
      raise ImportError('libtensorflow_framework.so.2 missing')
  """)
  assert result.returncode == 1
  assert 'oneDNN custom operations are on' in result.stderr
  assert 'cannot open shared object file' in result.stderr
  assert result.stderr.rstrip().endswith(
      'ImportError: libtensorflow_framework.so.2 missing')


# Written the way a C++ library writes while it loads: from C, with the GIL
# held (ctypes.PyDLL keeps it), so no Python thread of the process could
# read the pipe meanwhile.
_C_WRITE = """
    import ctypes
    libc = ctypes.PyDLL(None)
    def c_write(data):
      libc.write(2, data, len(data))
"""


def test_a_fatal_line_is_shown_when_the_process_aborts(tmp_path):
  result = _import_stand_in(tmp_path, _C_WRITE + f"""
    c_write(b'{_NOISE}')
    c_write(b'F0000 00:00:1764000000.000000  123 cpu_info.cc:9] '
            b'Check failed: the CPU lacks AVX\\n')
    libc.abort()
  """)
  assert result.returncode != 0
  assert 'Check failed: the CPU lacks AVX' in result.stderr
  # The lines before it are its context.
  assert result.stderr.index('oneDNN') < result.stderr.index('Check failed')
  assert 'imported' not in result.stdout


def test_what_was_written_is_shown_when_the_process_crashes(tmp_path):
  # A crash without a message of its own (e.g. an instruction the CPU
  # lacks): what the libraries wrote before it is all the user gets.
  result = _import_stand_in(tmp_path, _C_WRITE + f"""
    import signal
    c_write(b'{_NOISE}')
    os.kill(os.getpid(), signal.SIGSEGV)
  """)
  assert result.returncode != 0
  assert 'oneDNN custom operations are on' in result.stderr


def test_much_load_time_output_neither_blocks_nor_shows(tmp_path):
  # Four times a pipe's usual 64 KiB, written with the GIL held.
  result = _import_stand_in(tmp_path, _C_WRITE + """
    for _ in range(4096):
      c_write(b'I0000 00:00:0.0  1 noise.cc:1] ' + b'x' * 30 + b'\\n')
  """)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stderr == 'after the import\n'


def test_verbose_logging_hides_nothing(tmp_path):
  result = _import_stand_in(tmp_path, f"os.write(2, b'{_NOISE}')\n",
                            TF_CPP_MIN_LOG_LEVEL='0')
  assert result.returncode == 0, result.stderr
  assert result.stderr.startswith('WARNING: All log messages before absl')
  assert 'oneDNN custom operations are on.\nafter the import\n' in result.stderr


def test_a_quiet_import_leaves_the_environment_alone(tmp_path):
  # The log level is the program's to set (command_line.quiet_tensorflow),
  # not the library's: the import neither sets it nor needs it to hide the
  # load-time lines.
  result = _import_stand_in(tmp_path, f"""
      import sys
      os.write(2, b'{_NOISE}')
      print('level', os.environ.get('TF_CPP_MIN_LOG_LEVEL'), file=sys.stdout)
  """)
  assert result.returncode == 0, result.stderr
  assert result.stdout == 'level None\nimported True\n'
  assert result.stderr == 'after the import\n'
