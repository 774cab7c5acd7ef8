"""Resident memory of this process, for the benchmarks' peak figures (Linux)."""


def memory_status() -> tuple[int, int]:
  """(VmRSS, VmHWM) of this process in bytes: resident now, and its peak."""
  values = {}
  with open('/proc/self/status') as status:
    for line in status:
      key, _, rest = line.partition(':')
      if key in ('VmRSS', 'VmHWM'):
        values[key] = int(rest.split()[0]) * 1024
  return values['VmRSS'], values['VmHWM']


def reset_peak() -> int:
  """Resets the peak to the current resident size (writes 5 to
  /proc/self/clear_refs); returns that size in bytes."""
  with open('/proc/self/clear_refs', 'w') as clear_refs:
    clear_refs.write('5')
  return memory_status()[0]
