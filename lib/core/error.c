/* One table of error texts: errno values via strerror, project codes via the
 * X-macro in dfly.h, so a code and its text cannot drift apart. */
#include "core/core.h"

#include <string.h>

const char *df_strerror(int err)
{
    if (err == 0)
        return "success";
    switch (err) {
#define DF_X_(name, value, text)                                                                   \
    case name:                                                                                     \
        return text;
        DF_ERRNO_MAP(DF_X_)
#undef DF_X_
    default:
        break;
    }
    if (err < 0 && err > -4096)
        return strerror(-err);
    return "unknown error";
}

const char *df_version(void)
{
    return DF_VERSION_STRING;
}
