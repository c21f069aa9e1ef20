// Stub of MindSpore Lite's include/api/visible.h for the runner's tests: the export macro.
#ifndef METRIC_LEARN_LITE_STUB_VISIBLE_H_
#define METRIC_LEARN_LITE_STUB_VISIBLE_H_
#ifndef MS_API
#define MS_API __attribute__((visibility("default")))
#endif
#endif  // METRIC_LEARN_LITE_STUB_VISIBLE_H_
