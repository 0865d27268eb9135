// error_of: the id of the nwc::error a test body throws, for tests that check how bad input is
// refused. The message must say something; a body that throws nothing fails the test case.
#pragma once

#include <catch2/catch.hpp>

#include "nwc/core/error.hpp"

namespace nwc::testing {

template <class Body>
errc error_of(Body&& body) {
    try {
        body();
    } catch (const nwc::error& caught) {
        CHECK(!caught.message().empty());
        return caught.id();
    }
    FAIL("no nwc::error was thrown");
    return errc::io;
}

}  // namespace nwc::testing
